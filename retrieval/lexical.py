"""Lexical scoring (Okapi BM25) over example inputs, and the retrieval settings an index is tuned with.

Dense similarity misses what a label or extraction task keys on (a rare word, a name, a code);
BM25 weighs exactly those. `Tuning` is what the learning cycle chooses per route by held-out
evaluation and stores in the index artifact: the scoring (dense cosine, BM25, or their hybrid),
k, an absolute floor and a threshold relative to the best match of the query. Pure: numpy only.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

Scoring = Literal["dense", "bm25", "hybrid"]
Order = Literal["nearest", "agreeing"]
_TOKEN = re.compile(r"\w+", re.UNICODE)
_Hit = TypeVar("_Hit")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True, slots=True)
class Tuning:
    """How an index is queried: scoring, how many hits, and which are good enough.

    A hit is kept when its score is >= `min_score` and >= `relative_min` x the best hit's score
    (scores: cosine for dense, BM25 normalised by the query's best for bm25, their mean for hybrid).
    """

    scoring: Scoring = "dense"
    k: int = 4
    min_score: float = 0.3
    relative_min: float = 0.0
    # how the hits are laid out before the question (`arrange`): "nearest" closest last;
    # "agreeing": when more than half of the hits give one answer, those closest, then the rest
    order: Order = "nearest"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the index artifact's `retrieval`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tuning:
        """Inverse of `to_dict`."""
        scoring = str(d.get("scoring", "dense"))
        if scoring not in ("dense", "bm25", "hybrid"):
            raise ValueError(f"unknown scoring {scoring!r}")
        order = str(d.get("order", "nearest"))
        if order not in ("nearest", "agreeing"):
            raise ValueError(f"unknown order {order!r}")
        return cls(scoring, int(d.get("k", 4)), float(d.get("min_score", 0.3)),  # type: ignore[arg-type]
                   float(d.get("relative_min", 0.0)), order)  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line: "hybrid k=8, >= 0.6 x best"."""
        floor = f", >= {self.min_score:.2f}" if self.min_score > -1 else ""
        rel = f", >= {self.relative_min:.1f} x best" if self.relative_min > 0 else ""
        order = ", agreeing closest" if self.order == "agreeing" else ""
        return f"{self.scoring} k={self.k}{floor}{rel}{order}"


class BM25:
    """Okapi BM25 over a fixed list of documents (k1 1.2, b 0.75)."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self._n = len(docs)
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = np.zeros(self._n, dtype=np.float32)
        for i, doc in enumerate(docs):
            toks = tokens(doc)
            lengths[i] = len(toks)
            for term, tf in Counter(toks).items():
                self._postings[term].append((i, tf))
        avg = float(lengths.mean()) if self._n else 1.0
        self._norm = k1 * (1 - b + b * lengths / max(avg, 1e-9))
        self._k1 = k1

    def scores(self, query: str) -> NDArray[np.float32]:
        """A BM25 score per document (0 where no query term occurs)."""
        out = np.zeros(self._n, dtype=np.float32)
        for term in set(tokens(query)):
            posting = self._postings.get(term)
            if not posting:
                continue
            idf = math.log(1 + (self._n - len(posting) + 0.5) / (len(posting) + 0.5))
            idx = np.fromiter((i for i, _ in posting), dtype=np.int64, count=len(posting))
            tf = np.fromiter((t for _, t in posting), dtype=np.float32, count=len(posting))
            out[idx] += idf * tf * (self._k1 + 1) / (tf + self._norm[idx])
        return out


def answer_key(answer: str) -> str:
    """What two example answers must share to count as the same: case and spacing aside."""
    return " ".join(answer.split()).casefold()


def arrange(hits: Sequence[tuple[_Hit, float]], order: Order,
            answer: Callable[[_Hit], str]) -> list[tuple[_Hit, float]]:
    """Hits (best first) in the order they are listed for injection, the first put closest to the question.

    "agreeing": when more than half of the hits give one answer, those hits first, then the
    others, each group best first. A small model copies what it saw last far more than it weighs
    every example: put the consensus there and it answers with the consensus instead of the one
    nearest neighbour. Without a majority (free text, many labels and no consensus) nothing moves:
    a plurality would put a few loosely related look-alikes above a near-duplicate question.
    """
    if order == "nearest" or len(hits) < 3:
        return list(hits)
    counts = Counter(answer_key(answer(h)) for h, _ in hits)
    top, n = max(counts.items(), key=lambda kv: kv[1])
    if 2 * n <= len(hits):
        return list(hits)
    return ([x for x in hits if answer_key(answer(x[0])) == top]
            + [x for x in hits if answer_key(answer(x[0])) != top])


def select(scored: Sequence[tuple[int, float]], tuning: Tuning, limit: int) -> list[tuple[int, float]]:
    """The best `limit` of (position, score) pairs that pass the tuning's floor and relative threshold."""
    ranked = sorted(scored, key=lambda p: -p[1])
    if not ranked:
        return []
    best = ranked[0][1]
    bar = tuning.min_score
    if tuning.relative_min > 0 and best > 0:
        bar = max(bar, tuning.relative_min * best)
    return [p for p in ranked if p[1] >= bar][:limit]
