"""AsyncBatchEmbedder: batching, caching, sharing, back-pressure, errors, and a free event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from retrieval.embeddings import AsyncBatchEmbedder, EmbedderBusy, HashingEmbedder, Vectors


class CountingEmbedder:
    """Records every underlying `embed` call; optionally blocks until released."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.dim = 32
        self.name = "counting"
        self.calls: list[list[str]] = []
        self._inner = HashingEmbedder(dim=32)
        self._gate = gate
        self._fail = fail

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(list(texts))
        if self._gate is not None and not self._gate.wait(timeout=10):
            raise TimeoutError("gate never opened: the event loop was blocked")
        if self._fail:
            raise RuntimeError("model exploded")
        return self._inner.embed(texts)


async def test_concurrent_callers_share_one_embed_call() -> None:
    inner = CountingEmbedder()
    emb = AsyncBatchEmbedder(inner, max_wait_ms=5)
    texts = [f"question number {i}" for i in range(10)]
    try:
        vecs = await asyncio.gather(*(emb.embed_one(t) for t in texts))
    finally:
        await emb.aclose()
    assert len(inner.calls) == 1
    assert sorted(inner.calls[0]) == sorted(texts)
    expected = HashingEmbedder(dim=32).embed(texts)
    for got, want in zip(vecs, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert emb.stats.batches == 1 and emb.stats.texts == 10


async def test_batches_are_capped_at_max_batch() -> None:
    inner = CountingEmbedder()
    emb = AsyncBatchEmbedder(inner, max_batch=4, max_wait_ms=1)
    try:
        await asyncio.gather(*(emb.embed_one(f"t{i}") for i in range(10)))
    finally:
        await emb.aclose()
    assert [len(c) for c in inner.calls] == [4, 4, 2]


async def test_embedding_runs_off_the_event_loop() -> None:
    # The model blocks until a coroutine on the loop releases it: that only happens if the
    # embed call runs in another thread (otherwise the gate times out and the test fails).
    gate = threading.Event()
    inner = CountingEmbedder(gate=gate)
    emb = AsyncBatchEmbedder(inner, max_wait_ms=0)

    async def release_soon() -> None:
        while not inner.calls:
            await asyncio.sleep(0.001)
        gate.set()

    try:
        vec, _ = await asyncio.gather(emb.embed_one("hello"), release_soon())
    finally:
        await emb.aclose()
    assert vec.shape == (32,)


async def test_lru_cache_and_inflight_sharing() -> None:
    inner = CountingEmbedder()
    emb = AsyncBatchEmbedder(inner, max_wait_ms=0, cache_size=2)
    try:
        a1, a2 = await asyncio.gather(emb.embed_one("a"), emb.embed_one("a"))  # same text in flight
        assert len(inner.calls) == 1 and inner.calls[0] == ["a"]
        assert a1 is a2 and not a1.flags.writeable
        await emb.embed_one("a")  # cached
        assert len(inner.calls) == 1 and emb.stats.cache_hits == 1
        await emb.embed_one("b")
        await emb.embed_one("c")  # evicts "a" (least recently used)
        await emb.embed_one("a")
        assert [c for call in inner.calls for c in call] == ["a", "b", "c", "a"]
    finally:
        await emb.aclose()


async def test_full_queue_rejects_with_embedder_busy() -> None:
    gate = threading.Event()
    inner = CountingEmbedder(gate=gate)
    emb = AsyncBatchEmbedder(inner, max_batch=1, max_wait_ms=0, max_queue=1)
    first = asyncio.ensure_future(emb.embed_one("first"))
    while not inner.calls:  # worker has taken "first" and is blocked in the model
        await asyncio.sleep(0.001)
    second = asyncio.ensure_future(emb.embed_one("second"))  # fills the queue
    await asyncio.sleep(0)
    with pytest.raises(EmbedderBusy):
        await emb.embed_one("third")
    gate.set()
    await asyncio.gather(first, second)
    await emb.aclose()
    assert emb.stats.rejected == 1


async def test_model_error_reaches_every_waiter_and_worker_survives() -> None:
    inner = CountingEmbedder(fail=True)
    emb = AsyncBatchEmbedder(inner, max_wait_ms=1)
    try:
        results = await asyncio.gather(emb.embed_one("x"), emb.embed_one("y"), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        inner._fail = False
        assert (await emb.embed_one("x")).shape == (32,)
    finally:
        await emb.aclose()


async def test_closed_embedder_refuses() -> None:
    emb = AsyncBatchEmbedder(CountingEmbedder())
    await emb.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await emb.embed_one("x")
