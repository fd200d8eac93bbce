"""The gateway's one embedder, loaded lazily on a thread and shared by retrieval, routing and the learners.

It is shared between the request path (through `AsyncBatchEmbedder`) and the learners (through a
lock, in small chunks, so a learning run delays a request's embedding by one chunk at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from gateway import gc_pauses
from gateway.observability.metrics import EMBEDDER
from gateway.serve.augment import EmbedFn
from retrieval.embeddings import AsyncBatchEmbedder, Embedder, Vectors, load_embedder

log = logging.getLogger("flywheel.serving")

_CHUNK = 32


class LockedEmbedder:
    """An embedder safe to share between threads: one chunk of texts at a time."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.name = inner.name
        self._lock = threading.Lock()
        self._latency = EMBEDDER.labels(inner.name)  # flywheel_embedder_latency_seconds, per chunk

    def embed(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        parts = []
        for start in range(0, len(texts), _CHUNK):
            with self._lock:
                began = time.perf_counter()  # inside the lock: the embedder's time, not the wait for it
                parts.append(self.inner.embed(texts[start:start + _CHUNK]))
                self._latency.observe(time.perf_counter() - began)
        return np.vstack(parts) if parts else self.inner.embed([])


class EmbedderHolder:
    """The one embedder of a gateway, built on first use (MiniLM takes seconds to load)."""

    def __init__(self, kind: Callable[[], str]) -> None:
        self._kind = kind
        self._loaded: tuple[str, LockedEmbedder, AsyncBatchEmbedder] | None = None
        self._lock = asyncio.Lock()
        self._loading: asyncio.Task[LockedEmbedder] | None = None

    async def get(self) -> LockedEmbedder:
        """The embedder for `[learners] embedder`, loading it on a thread if needed."""
        kind = self._kind()
        if self._loaded is not None and self._loaded[0] == kind:
            return self._loaded[1]
        async with self._lock:
            if self._loaded is None or self._loaded[0] != kind:
                inner = await asyncio.to_thread(load_embedder, kind, fallback="hashing")
                gc_pauses.settle(collect=False)  # model weights live as long as the process
                old, self._loaded = self._loaded, (kind, (e := LockedEmbedder(inner)), AsyncBatchEmbedder(e))
                if old is not None:
                    await old[2].aclose()
            return self._loaded[1]

    def embed_fn(self) -> EmbedFn | None:
        """The request path's embedding function, or None while nothing is loaded."""
        return self._loaded[2].embed_one if self._loaded is not None else None

    def current_fn(self) -> EmbedFn | None:
        """The embedding function of the configured kind; when that is not loaded, start loading it
        in the background and return None (a request never waits seconds for a model to load)."""
        if self._loaded is not None and self._loaded[0] == self._kind():
            return self._loaded[2].embed_one
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self.get(), name="flywheel-embedder-load")
            self._loading.add_done_callback(_log_failure)
        return None

    async def aclose(self) -> None:
        """Stop a load in progress and the request path's embedding worker."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loading
        if self._loaded is not None:
            await self._loaded[2].aclose()
            self._loaded = None


def _log_failure(task: asyncio.Task[LockedEmbedder]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loading the embedder failed", exc_info=task.exception())
