"""Turns `Features` into the learned router's small fixed-length vector.

Layout: `[bias, log prompt length, has_tools, memory score, memory agreement, their product,
projection of the embedding (dims values)]`. The memory coordinates (see `Features`) are 0 when
retrieval injected nothing; their product is there because a linear model cannot otherwise say
"close *and* agreeing examples", which is when a cheap model copies the right answer.
The projection is a fixed random ±1 matrix derived from blake2b of (seed, input dim), so it is
identical across processes, machines and numpy versions and need not be stored with a policy.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from policies.base import Features

Vector = npt.NDArray[np.float64]

N_FIXED = 6  # bias, log length, has_tools, memory score, memory agreement, score x agreement
# log1p(chars) is ~3 for a one-liner, ~6 for a paragraph, ~10 for a long document: centre and
# scale it to about [-1.5, 2] so one ridge prior suits every coordinate
_LEN_CENTRE = 6.0
_LEN_SCALE = 2.0


# an answer's words and numbers, case aside: a signed number (its sign kept: "-4" is not "4") or a run of letters
_TOKEN = re.compile(r"[-+\u2212]?\d+(?:[.,]\d+)*|[^\W\d_]+")
# a memory answer longer than this many tokens is free text, not a label: only an answer with the same
# words reads as it (a label is found anywhere in an answer, the first one named winning)
_LABEL_TOKENS = 8


def answer_tokens(text: str) -> tuple[str, ...]:
    """`text`'s words and signed numbers, casefolded: punctuation, quoting, underscores and spacing aside."""
    return tuple(t.replace("\u2212", "-").removeprefix("+") for t in _TOKEN.findall(text.casefold()))


@dataclass(frozen=True, slots=True)
class Memory:
    """What a request's retrieved examples answer: `answer`, the one most of them give (nearest first
    on a tie), `choices`, every distinct answer among them, as `answer_tokens`, and `agreement`, the
    share giving the nearest one's answer (`Features.memory_agreement`).

    A model rarely echoes a label exactly ("Positive.", "The sentiment is positive"), so an answer is
    compared with memory by the choice it names (`reading`), not by its text."""

    answer: tuple[str, ...]
    choices: tuple[tuple[str, ...], ...]
    agreement: float

    def reading(self, text: str) -> tuple[str, ...] | None:
        """The choice `text` gives: one with the same words, else the label-like choice named first
        (a longer one wins at the same place: "tech support" over "tech"); None when it names none."""
        tokens = answer_tokens(text)
        if tokens in self.choices:
            return tokens
        best: tuple[int, int, tuple[str, ...]] | None = None
        for choice in self.choices:
            if not 0 < len(choice) <= _LABEL_TOKENS:
                continue
            at = _find(tokens, choice)
            if at >= 0 and (best is None or (at, -len(choice)) < best[:2]):
                best = (at, -len(choice), choice)
        return best[2] if best else None

    def disagrees(self, text: str) -> bool:
        """Whether `text` gives another answer than most retrieved examples (or names none of theirs)."""
        return self.reading(text) != self.answer


def _find(tokens: tuple[str, ...], part: tuple[str, ...]) -> int:
    """Where `part` first occurs as a run of `tokens`, -1 if nowhere."""
    n = len(part)
    for i in range(len(tokens) - n + 1):
        if tokens[i:i + n] == part:
            return i
    return -1


def same_answer(first: str, second: str, memory: Memory | None = None) -> bool:
    """Whether two answers give the same: the same choice of `memory`'s, or the same words when
    either names none of them (or there is no memory)."""
    a, b = (memory.reading(first), memory.reading(second)) if memory is not None else (None, None)
    if a is None or b is None:
        return answer_tokens(first) == answer_tokens(second)
    return a == b


def memory_agreement(answers: Iterable[str]) -> float:
    """Share of `answers` (nearest example first) giving the same words as the first (`answer_tokens`).

    0.0 when there are none: no memory is no evidence, the same as retrieval being off."""
    memory = memory_answer(answers)
    return memory.agreement if memory is not None else 0.0


def memory_answer(answers: Iterable[str]) -> Memory | None:
    """The `Memory` of retrieved examples' `answers` (nearest first); None when there are none."""
    counts: dict[tuple[str, ...], int] = {}
    for a in answers:
        key = answer_tokens(a)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    nearest = next(iter(counts))  # dicts keep insertion order: the nearest example's answer
    # max keeps the first of equals: a tie goes to the answer nearer the question
    return Memory(max(counts, key=counts.__getitem__), tuple(counts), counts[nearest] / sum(counts.values()))


def projection_matrix(dims: int, input_dim: int, seed: int) -> Vector:
    """A (dims, input_dim) matrix of ±1 entries, deterministic in (dims, input_dim, seed)."""
    n_bits = dims * input_dim
    blocks = (n_bits + 511) // 512  # blake2b gives 64 bytes = 512 bits per digest
    raw = b"".join(
        hashlib.blake2b(f"flywheel-proj:{seed}:{input_dim}:{i}".encode(), digest_size=64).digest()
        for i in range(blocks)
    )
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n_bits]
    return (bits.astype(np.float64) * 2.0 - 1.0).reshape(dims, input_dim)


class Featuriser:
    """Maps a request's features to a vector of length `size` (= dims + N_FIXED)."""

    def __init__(self, dims: int = 16, seed: int = 0) -> None:
        if dims < 0:
            raise ValueError(f"dims must be >= 0, got {dims}")
        self.dims = dims
        self.seed = seed
        self.size = N_FIXED + dims
        # (input dim, dtype) -> matrix, built on first sight; ±1 is exact in any float dtype, and
        # matching the embedding's dtype saves an upcast of the embedding on every call
        self._proj: dict[tuple[int, str], npt.NDArray[Any]] = {}

    def _matrix(self, input_dim: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        key = (input_dim, dtype.char)
        m = self._proj.get(key)
        if m is None:
            m = projection_matrix(self.dims, input_dim, self.seed).astype(dtype)
            self._proj[key] = m
        return m

    def vector(self, f: Features, out: Vector | None = None) -> Vector:
        """Fill `out` (or a new array) with the feature vector of `f` and return it."""
        x = np.empty(self.size) if out is None else out
        x[0] = 1.0
        x[1] = (math.log1p(max(f.prompt_chars, 0)) - _LEN_CENTRE) / _LEN_SCALE
        x[2] = 1.0 if f.has_tools else 0.0
        x[3] = f.memory_score
        x[4] = f.memory_agreement
        x[5] = f.memory_score * f.memory_agreement
        if self.dims == 0:
            return x
        e = f.embedding
        if e is None or e.size == 0:
            x[N_FIXED:] = 0.0
            return x
        if e.ndim != 1:
            e = e.reshape(-1)
        if e.dtype.kind != "f":
            e = e.astype(np.float64)
        sq = float(e.dot(e))
        if not sq > 0.0 or not math.isfinite(sq):
            x[N_FIXED:] = 0.0
            return x
        # unit-normalising makes each projected coordinate ~N(0, 1) whatever the embedder's scale
        x[N_FIXED:] = self._matrix(e.shape[0], e.dtype) @ e
        x[N_FIXED:] *= 1.0 / math.sqrt(sq)
        return x
