"""VectorIndex: exact and IVF search, min_score, serialisation round trip, validation."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from retrieval.vector_index import VectorIndex


def unit(n: int, dim: int, seed: int = 0) -> NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_flat_search_finds_itself_first_with_sorted_scores() -> None:
    vecs = unit(50, 16)
    idx = VectorIndex.build(vecs, [f"id{i}" for i in range(50)])
    assert idx.kind == "flat" and len(idx) == 50 and idx.dim == 16
    hits = idx.search(vecs[7], k=5)
    assert hits[0][0] == "id7" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 5
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)


def test_min_score_filters_and_k_larger_than_index() -> None:
    vecs = np.eye(4, dtype=np.float32)
    idx = VectorIndex.build(vecs, ["a", "b", "c", "d"])
    hits = idx.search(vecs[1], k=10)
    assert hits[0] == ("b", 1.0) and len(hits) == 4
    assert idx.search(vecs[1], k=10, min_score=0.5) == [("b", 1.0)]
    assert idx.search(-vecs[1], k=10, min_score=0.1) == []


def test_round_trip_bytes_preserves_results() -> None:
    vecs = unit(200, 24, seed=1)
    ids = [f"ex-{i}" for i in range(200)]
    idx = VectorIndex.build(vecs, ids)
    data = idx.to_bytes()
    back = VectorIndex.from_bytes(data)
    assert back.ids == idx.ids and back.kind == "flat" and back.dim == 24
    q = unit(3, 24, seed=2)
    assert back.search_many(q, k=8) == idx.search_many(q, k=8)


def test_ivf_kind_round_trip_and_recall_on_planted_neighbours() -> None:
    vecs = unit(4000, 32, seed=3)
    ids = [str(i) for i in range(4000)]
    idx = VectorIndex.build(vecs, ids, kind="ivf", nprobe=8)
    assert idx.kind == "ivf"
    rng = np.random.default_rng(4)
    picks = rng.choice(4000, 50, replace=False)
    q = vecs[picks] + 0.02 * rng.standard_normal((50, 32)).astype(np.float32)
    top1 = [hits[0][0] for hits in idx.search_many(q, k=1)]
    assert sum(t == str(p) for t, p in zip(top1, picks, strict=True)) >= 45
    back = VectorIndex.from_bytes(idx.to_bytes())
    assert back.kind == "ivf"
    assert back.search_many(q, k=4) == idx.search_many(q, k=4)


def test_empty_index() -> None:
    idx = VectorIndex.build(np.zeros((0, 8), dtype=np.float32), [], dim=8)
    assert idx.search(np.ones(8, dtype=np.float32), k=3) == []
    assert VectorIndex.from_bytes(idx.to_bytes()).search(np.ones(8), k=3) == []
    with pytest.raises(ValueError, match="dim"):
        VectorIndex.build(np.zeros((0,)), [])


def test_validation_errors() -> None:
    vecs = unit(3, 8)
    with pytest.raises(ValueError, match="ids"):
        VectorIndex.build(vecs, ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        VectorIndex.build(vecs, ["a", "a", "b"])
    idx = VectorIndex.build(vecs, ["a", "b", "c"])
    with pytest.raises(ValueError, match="shape"):
        idx.search(np.ones(9, dtype=np.float32))
    with pytest.raises(ValueError, match="not a Flywheel"):
        VectorIndex.from_bytes(b"garbage-bytes")


def test_index_is_not_mutable_after_build() -> None:
    idx = VectorIndex.build(unit(3, 8), ["a", "b", "c"])
    with pytest.raises(AttributeError):
        idx.extra = 1  # type: ignore[attr-defined]
    assert isinstance(idx.ids, tuple)
