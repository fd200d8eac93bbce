"""Curated few-shot examples and the index that retrieves them for a request.

An `ExampleIndex` pairs a `VectorIndex` over the examples' inputs with the examples themselves and
the name/dim of the embedder that produced the vectors, so a stored index is never queried with
vectors from a different model. It serialises to a JSON-safe manifest plus bytes (`to_artifact`),
or to a single JSON body with the bytes in base64 (`to_body`) that fits `ArtifactRecord.body`.
An index may carry the retrieval `Tuning` the learning cycle chose for it (`retrieval` in the
body); `search` applies a tuning: dense, BM25 or hybrid scoring, k, absolute and relative floors.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from retrieval.embeddings import Embedder
from retrieval.lexical import BM25, Tuning, select
from retrieval.vector_index import IndexKind, VectorIndex

ExampleSource = Literal["correction", "rated"]

_DEDUPE_BLOCK = 1024


@dataclass(frozen=True, slots=True)
class Example:
    """One curated input -> output pair, taken from a corrected or positively rated call."""

    id: str
    input: str  # the user's text the example is retrieved by
    output: str  # the answer to imitate (the correction, or the rated response)
    source_call_id: str
    source: str  # ExampleSource: "correction" | "rated"
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        """Inverse of `to_dict`."""
        return cls(
            id=str(d["id"]),
            input=str(d["input"]),
            output=str(d["output"]),
            source_call_id=str(d["source_call_id"]),
            source=str(d["source"]),
            created_at=float(d["created_at"]),
        )


VECTORS = "index_b64"  # the body field holding the vector index bytes (base64)


class ExampleIndex:
    """Examples searchable by the similarity of their inputs to a query vector. Immutable."""

    __slots__ = ("_bm25", "_by_id", "_examples", "_index", "_position", "embedder_name", "tuning")

    def __init__(self, examples: Sequence[Example], index: VectorIndex, embedder_name: str,
                 tuning: Tuning | None = None) -> None:
        """Internal: use `build` or `from_artifact`."""
        if tuple(e.id for e in examples) != index.ids:
            raise ValueError("examples and vector index ids differ")
        self._examples = tuple(examples)
        self._by_id = {e.id: e for e in self._examples}
        self._position = {e.id: i for i, e in enumerate(self._examples)}
        self._index = index
        self._bm25: BM25 | None = None
        self.embedder_name = embedder_name
        self.tuning = tuning  # chosen by the learning cycle; None: the route's settings apply

    def with_tuning(self, tuning: Tuning | None) -> ExampleIndex:
        """The same examples and vectors queried with `tuning`."""
        other = ExampleIndex(self._examples, self._index, self.embedder_name, tuning)
        other._bm25 = self._bm25
        return other

    def search(self, vec: NDArray[Any], question: str, tuning: Tuning, k: int) -> list[tuple[Example, float]]:
        """Up to `k` hits for a query by `tuning`'s scoring and floors, best first."""
        if tuning.scoring == "dense":
            hits = self._index.search(vec, k, tuning.min_score)
            return [(self._examples[p], s) for p, s in select([(self._position[i], s) for i, s in hits], tuning, k)]
        if self._bm25 is None:
            self._bm25 = BM25([e.input for e in self._examples])
        lexical = self._bm25.scores(question)
        top = float(lexical.max()) if len(lexical) else 0.0
        lex = lexical / top if top > 0 else lexical
        if tuning.scoring == "bm25":
            scored = [(int(p), float(lex[p])) for p in np.flatnonzero(lex > 0)]
        else:
            near = {self._position[i]: s for i, s in self._index.search(vec, max(50, 4 * k), -1.0)}
            floor = min(near.values(), default=0.0)  # an example not among the dense top: at most this close
            cands = set(near) | {int(p) for p in np.argsort(-lex)[: max(50, 4 * k)] if lex[p] > 0}
            scored = [(p, (near.get(p, floor) + float(lex[p])) / 2) for p in cands]
        return [(self._examples[p], s) for p, s in select(scored, tuning, k)]

    @classmethod
    def build(
        cls, examples: Sequence[Example], embedder: Embedder, *, kind: IndexKind | Literal["auto"] = "auto"
    ) -> ExampleIndex:
        """Embed every example's input and index it (ids must be unique)."""
        vecs = embedder.embed([e.input for e in examples])
        index = VectorIndex.build(vecs, [e.id for e in examples], kind=kind, dim=embedder.dim)
        return cls(examples, index, embedder.name)

    @property
    def dim(self) -> int:
        """Dimension of the query vectors this index expects."""
        return self._index.dim

    @property
    def examples(self) -> tuple[Example, ...]:
        """All examples, in index order."""
        return self._examples

    def __len__(self) -> int:
        return len(self._examples)

    def query(self, vec: NDArray[Any], k: int = 4, min_score: float = 0.0) -> list[tuple[Example, float]]:
        """Up to `k` (example, cosine score) pairs with score >= `min_score`, most similar first."""
        return [(self._by_id[i], s) for i, s in self._index.search(vec, k, min_score)]

    def without(self, ids: Collection[str]) -> ExampleIndex:
        """This index less the examples in `ids` (their vectors too); `self` when none is held."""
        if not any(e.id in ids for e in self._examples):
            return self
        return ExampleIndex([e for e in self._examples if e.id not in ids], self._index.without(ids),
                            self.embedder_name, self.tuning)

    def to_artifact(self) -> tuple[dict[str, Any], bytes]:
        """A JSON-safe manifest (embedder, dim, kind, examples) and the vector index bytes."""
        manifest = {
            "embedder": self.embedder_name,
            "dim": self._index.dim,
            "index_kind": self._index.kind,
            "count": len(self._examples),
            "examples": [e.to_dict() for e in self._examples],
        }
        if self.tuning is not None:
            manifest["retrieval"] = self.tuning.to_dict()
        return manifest, self._index.to_bytes()

    @classmethod
    def from_artifact(cls, manifest: dict[str, Any], data: bytes, embedder: Embedder | None = None) -> ExampleIndex:
        """Inverse of `to_artifact`; with `embedder`, refuse an index built by another model."""
        if embedder is not None and (embedder.name, embedder.dim) != (manifest["embedder"], manifest["dim"]):
            raise ValueError(
                f"index built with {manifest['embedder']} ({manifest['dim']}d) cannot be queried with "
                f"{embedder.name} ({embedder.dim}d)"
            )
        examples, tuning = _examples_and_tuning(manifest)
        return cls(examples, VectorIndex.from_bytes(data), str(manifest["embedder"]), tuning)

    def to_body(self) -> dict[str, Any]:
        """The manifest with the index bytes inlined as base64: one JSON value for an artifact row."""
        manifest, data = self.to_artifact()
        return {**manifest, VECTORS: base64.b64encode(data).decode("ascii")}

    @classmethod
    def from_body(cls, body: dict[str, Any], embedder: Embedder | None = None) -> ExampleIndex:
        """Inverse of `to_body`. A body without its vectors (`without_vectors`) is rebuilt from its
        examples with `embedder`, which must be the model that built it (ValueError otherwise)."""
        manifest = without_vectors(body)
        if VECTORS in body:
            return cls.from_artifact(manifest, base64.b64decode(body[VECTORS]), embedder)
        if embedder is None or (embedder.name, embedder.dim) != (manifest["embedder"], manifest["dim"]):
            raise ValueError(f"index body without vectors: rebuilding it needs its embedder {manifest['embedder']}")
        examples, tuning = _examples_and_tuning(manifest)
        return cls.build(examples, embedder).with_tuning(tuning)


def _examples_and_tuning(manifest: dict[str, Any]) -> tuple[list[Example], Tuning | None]:
    """An index manifest's examples and stored retrieval settings."""
    tuning = Tuning.from_dict(manifest["retrieval"]) if isinstance(manifest.get("retrieval"), dict) else None
    return [Example.from_dict(d) for d in manifest["examples"]], tuning


def without_vectors(body: dict[str, Any]) -> dict[str, Any]:
    """An index body less its vector bytes, the bulk of it: what a version that will never serve
    again keeps. Its examples, embedder and retrieval settings stay (diffs, blame and audits read
    them); `ExampleIndex.from_body` rebuilds the vectors from the examples if ever asked to."""
    return {k: v for k, v in body.items() if k != VECTORS}


def dedupe(examples: Sequence[Example], embedder: Embedder, threshold: float = 0.95) -> list[Example]:
    """Drop near-duplicate inputs (cosine >= `threshold`), keeping the newest of each group.

    Greedy, newest first, so the newest correction wins as the learning contract says. The result
    keeps the input order. Cost is O(n x kept) similarity products, done in blocks.
    """
    if not examples:
        return []
    order = sorted(range(len(examples)), key=lambda i: (-examples[i].created_at, examples[i].id))
    vecs = embedder.embed([examples[i].input for i in order])
    kept_rows: list[int] = []  # positions in `order`
    kept_vecs = np.zeros((0, vecs.shape[1]), dtype=np.float32)
    for start in range(0, len(order), _DEDUPE_BLOCK):
        block = vecs[start : start + _DEDUPE_BLOCK]
        dup_of_kept = (block @ kept_vecs.T).max(axis=1, initial=-1.0) >= threshold
        inner = block @ block.T
        kept_mask = np.zeros(len(block), dtype=bool)
        for j in range(len(block)):
            kept_mask[j] = not dup_of_kept[j] and not bool(np.any(inner[j, :j][kept_mask[:j]] >= threshold))
        kept_rows += [start + int(j) for j in np.flatnonzero(kept_mask)]
        kept_vecs = np.vstack([kept_vecs, block[kept_mask]])
    keep = {order[r] for r in kept_rows}
    return [e for i, e in enumerate(examples) if i in keep]


def few_shot_messages(hits: Sequence[tuple[Example, float]]) -> list[dict[str, str]]:
    """User/assistant message pairs for `hits` (best first), ordered so the best is nearest the query.

    Models weigh the demonstrations closest to the final message most, so the best hit goes last.
    """
    messages: list[dict[str, str]] = []
    for example, _score in reversed(hits):
        messages.append({"role": "user", "content": example.input})
        messages.append({"role": "assistant", "content": example.output})
    return messages


def with_few_shot(messages: Sequence[dict[str, Any]], hits: Sequence[tuple[Example, float]]) -> list[dict[str, Any]]:
    """A copy of `messages` with the few-shot pairs inserted just before the final user message."""
    shots = few_shot_messages(hits)
    out = list(messages)
    last_user = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=len(out))
    return out[:last_user] + shots + out[last_user:]
