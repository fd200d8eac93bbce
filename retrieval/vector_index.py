"""An immutable inner-product vector index over faiss, with a self-contained byte format.

Index choice by size (measured on this 2-core machine, dim 384, see bench/retrieval.py):
- up to `FLAT_MAX` vectors: `IndexFlatIP`, exact, no training. 5k x 384 floats (7.5 MiB) stay in
  cache and scan in ~0.2 ms; at 10k ~1 ms; at 20k the scan is memory bound (~7 ms) and blows the
  5 ms p99 budget. Curated examples usually number hundreds to thousands, so this is the common
  case, and it is exact and deterministic.
- above: `IndexIVFFlat` with ~sqrt(N) lists, probing `nprobe` of them: a flat scan of 100k vectors
  takes ~30 ms; IVF with nprobe=8 scans ~2.5% of them (~0.4 ms, planted-neighbour recall@1 0.999
  on random vectors, the hardest case; raise `nprobe` for recall, lower it for speed).
  IVF was chosen over HNSW because the learner rebuilds the index every cycle: HNSW (M=32) took
  ~86 s to build 100k vectors here versus ~10 s for IVF, and IVF's memory is just the raw vectors
  (HNSW adds ~M x 8 bytes per vector).
The gateway should run faiss with one OpenMP thread (`faiss.omp_set_num_threads(1)` at startup):
idle OpenMP workers spin and compete with the event loop on a 2-core machine.
A new version is a new object: nothing mutates an index after `build`, so the gateway swaps whole
objects and a request never sees a half-built one.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Collection, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

IndexKind = Literal["flat", "ivf"]

FLAT_MAX = 10_000
_MAGIC = b"FWVI"
_FORMAT = 1


def _as_matrix(vectors: NDArray[Any], dim: int | None = None) -> NDArray[np.float32]:
    mat = np.ascontiguousarray(vectors, dtype=np.float32)
    if mat.ndim == 1:
        mat = mat.reshape(1, -1)
    if mat.ndim != 2 or (dim is not None and mat.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, dim)"
        raise ValueError(f"expected vectors of shape {want}, got {vectors.shape}")
    return mat


class VectorIndex:
    """Top-k inner-product search over unit vectors (inner product = cosine similarity)."""

    __slots__ = ("_dim", "_ids", "_index", "_kind", "_nprobe")

    def __init__(self, index: Any, ids: tuple[str, ...], dim: int, kind: IndexKind, nprobe: int) -> None:
        """Internal: use `build` or `from_bytes`."""
        self._index = index
        self._ids = ids
        self._dim = dim
        self._kind: IndexKind = kind
        self._nprobe = nprobe

    @classmethod
    def build(
        cls,
        vectors: NDArray[Any],
        ids: Sequence[str],
        *,
        kind: IndexKind | Literal["auto"] = "auto",
        nprobe: int = 8,
        dim: int | None = None,
    ) -> VectorIndex:
        """Index unit `vectors` (n, dim) under unique `ids`. `dim` is needed only when n == 0."""
        import faiss

        arr = np.asarray(vectors, dtype=np.float32)
        if arr.size == 0:
            d0 = dim if dim is not None else (arr.shape[1] if arr.ndim == 2 else None)
            if d0 is None:
                raise ValueError("dim is needed to build an empty index")
            mat = np.zeros((0, d0), dtype=np.float32)
        else:
            mat = _as_matrix(arr, dim)
        n, d = mat.shape
        if len(ids) != n:
            raise ValueError(f"{n} vectors but {len(ids)} ids")
        if len(set(ids)) != n:
            raise ValueError("ids must be unique")
        chosen: IndexKind = ("flat" if n <= FLAT_MAX else "ivf") if kind == "auto" else kind
        if n == 0:
            chosen = "flat"  # IVF cannot train on nothing
        index: Any
        if chosen == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            # ~sqrt(N) lists keeps both the centroid scan and each list scan small; faiss wants
            # >= 39 training points per list, so tiny inputs get fewer lists.
            nlist = max(1, min(int(math.sqrt(n)), n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(mat)
            index.nprobe = nprobe
        if n:
            index.add(mat)
        return cls(index, tuple(ids), d, chosen, nprobe)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def kind(self) -> IndexKind:
        """ "flat" (exact) or "ivf" (approximate)."""
        return self._kind

    @property
    def ids(self) -> tuple[str, ...]:
        """Ids in insertion order."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query_vec: NDArray[Any], k: int = 8, min_score: float = -1.0) -> list[tuple[str, float]]:
        """Up to `k` (id, score) pairs with score >= `min_score`, best first."""
        return self.search_many(query_vec, k, min_score)[0]

    def search_many(
        self, query_vecs: NDArray[Any], k: int = 8, min_score: float = -1.0
    ) -> list[list[tuple[str, float]]]:
        """`search` for each row of `query_vecs` (one faiss call)."""
        q = _as_matrix(query_vecs, self._dim)
        if not self._ids or k <= 0:
            return [[] for _ in range(len(q))]
        scores, idx = self._index.search(q, min(k, len(self._ids)))
        return [
            [
                (self._ids[i], float(s))
                for i, s in zip(row_i, row_s, strict=True)
                if i >= 0 and s >= min_score  # faiss pads missing results with -1
            ]
            for row_i, row_s in zip(idx, scores, strict=True)
        ]

    def without(self, ids: Collection[str]) -> VectorIndex:
        """A new index holding every vector but those of `ids` (for forgetting a user's examples):
        the kept vectors are read back from the index and indexed again, as `kind` dictates."""
        keep = [i for i, x in enumerate(self._ids) if x not in ids]
        if len(keep) == len(self._ids):
            return self
        if self._kind == "ivf":
            self._index.make_direct_map()  # IVF lists only map ids -> vectors once asked to
        vectors = self._index.reconstruct_n(0, len(self._ids)) if self._ids else np.zeros((0, self._dim))
        kept_ids = [self._ids[i] for i in keep]
        return VectorIndex.build(vectors[keep], kept_ids, kind=self._kind if len(keep) > FLAT_MAX else "auto",
                                 nprobe=self._nprobe, dim=self._dim)

    def to_bytes(self) -> bytes:
        """Self-contained bytes: magic, header length, JSON header (ids, kind...), faiss index."""
        import faiss

        meta = {"format": _FORMAT, "dim": self._dim, "kind": self._kind, "nprobe": self._nprobe}
        header = json.dumps({**meta, "ids": self._ids}).encode("utf-8")
        blob = faiss.serialize_index(self._index).tobytes()
        return _MAGIC + struct.pack("<I", len(header)) + header + blob

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        """Inverse of `to_bytes`; raises ValueError on foreign or corrupt data."""
        import faiss

        if data[:4] != _MAGIC or len(data) < 8:
            raise ValueError("not a Flywheel vector index")
        (hlen,) = struct.unpack("<I", data[4:8])
        header = json.loads(data[8 : 8 + hlen])
        if header.get("format") != _FORMAT:
            raise ValueError(f"unsupported vector index format {header.get('format')!r}")
        index: Any = faiss.deserialize_index(np.frombuffer(data[8 + hlen :], dtype=np.uint8))
        ids = tuple(header["ids"])
        if index.ntotal != len(ids) or index.d != header["dim"]:
            raise ValueError("vector index header does not match its faiss index")
        if header["kind"] == "ivf":
            index.nprobe = header["nprobe"]
        return cls(index, ids, int(header["dim"]), header["kind"], int(header["nprobe"]))
