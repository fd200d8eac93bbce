"""Loads each route's current and canary artifacts from the store into the live `Augmenter`.

Also seeds a route's template: on first start, a route with `template = "path"` in config.toml
and no template artifact yet gets version "t0" (the file's text), promoted at once.
The embedder behind retrieval is loaded lazily, on a thread, the first time an index needs it,
and shared between the request path (through `AsyncBatchEmbedder`) and the learners (through a
lock, in small chunks, so a learning run delays a request's embedding by one chunk at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import heap
from gateway.augment import Augmenter, EmbedFn, LoadedIndex, LoadedTemplate, RouteServing, ServingSet
from gateway.settings import Settings
from gateway.templating import CompiledTemplate, Template, TemplateError
from learners.artifacts import ArtifactRegistry, Manifest
from learners.embeddings import AsyncBatchEmbedder, Embedder, Vectors, load_embedder
from learners.examples import ExampleIndex

log = logging.getLogger("flywheel.serving")

_CHUNK = 32


class LockedEmbedder:
    """An embedder safe to share between threads: one chunk of texts at a time."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.name = inner.name
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        parts = []
        for start in range(0, len(texts), _CHUNK):
            with self._lock:
                parts.append(self.inner.embed(texts[start:start + _CHUNK]))
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
                heap.settle(collect=False)  # model weights live as long as the process
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


class ServingLoader:
    """Keeps the augmenter in step with the store's artifact states."""

    def __init__(self, registry: ArtifactRegistry, augmenter: Augmenter, embedders: EmbedderHolder,
                 settings: Callable[[], Settings], config_dir: Path) -> None:
        self.registry = registry
        self.augmenter = augmenter
        self.embedders = embedders
        self._settings = settings
        self._config_dir = config_dir
        self._cache: dict[tuple[str, str, str], Any] = {}  # (route, kind, version): loaded, immutable

    async def seed(self, route: str) -> str | None:
        """Store and promote "t0" from the route's template file if it has no template yet."""
        rs = self._settings().routes.get(route)
        if rs is None or not rs.template:
            return None
        if (await self.registry.states(route, "template")).versions:
            return None
        path = Path(rs.template)
        path = path if path.is_absolute() else self._config_dir / path
        try:
            text = path.read_text(encoding="utf-8")
            CompiledTemplate(Template(text))
        except (OSError, TemplateError) as exc:
            log.error("routes.%s.template: cannot seed from %s: %s", route, path, exc)
            return None
        manifest = Manifest(produced_by=f"seed:{rs.template}", note=f"seed template from {rs.template}")
        await self.registry.save_candidate(route, "template", Template(text).to_body(), manifest, version="t0")
        await self.registry.move(route, "template", "t0", "promoted", f"seed template from {rs.template}")
        return "t0"

    async def refresh(self, route: str) -> RouteServing | None:
        """Reload `route`'s current and canary versions (bodies only for versions not loaded yet)."""
        states = await self.registry.all_states(route)
        t, i = states.get("template"), states.get("index")
        cur_t = await self._template(route, t.current) if t else None
        can_t = await self._template(route, t.canary) if t else None
        cur_i = await self._index(route, i.current) if i else None
        can_i = await self._index(route, i.canary) if i else None
        serving = RouteServing(ServingSet(cur_t, cur_i), can_t, can_i, self._settings().learners.canary_share)
        live = {(route, "template", x.version) for x in (cur_t, can_t) if x is not None}
        live |= {k for k in self._cache if k[0] == route and k[1] == "index"
                 and k[2].split("@")[0] in {x.version for x in (cur_i, can_i) if x is not None}}
        self._cache = {k: v for k, v in self._cache.items() if k[0] != route or k in live}
        empty = cur_t is None and cur_i is None and not serving.has_canary
        self.augmenter.install(route, None if empty else serving)
        return None if empty else serving

    async def refresh_all(self) -> None:
        """Seed and refresh every configured route."""
        for route in self._settings().routes:
            try:
                await self.seed(route)
                await self.refresh(route)
            except Exception:  # one broken route must not keep the others stale
                log.exception("route %s: refreshing artifacts failed", route)

    async def _template(self, route: str, version: str | None) -> LoadedTemplate | None:
        if version is None:
            return None
        key = (route, "template", version)
        if key not in self._cache:
            rec = await self.registry.get(route, "template", version)
            if rec is None:
                return None
            try:
                self._cache[key] = LoadedTemplate(version, CompiledTemplate(Template.from_body(rec.body)))
            except TemplateError as exc:
                log.error("route %s: template %s cannot be served: %s", route, version, exc)
                return None
        loaded: LoadedTemplate = self._cache[key]
        return loaded

    async def _index(self, route: str, version: str | None) -> LoadedIndex | None:
        if version is None:
            return None
        embedder = await self.embedders.get()
        key = (route, "index", f"{version}@{embedder.name}")
        if key not in self._cache:
            rec = await self.registry.get(route, "index", version)
            if rec is None or not isinstance(rec.body, dict):
                return None
            try:
                index = await asyncio.to_thread(ExampleIndex.from_body, rec.body, embedder)
            except (ValueError, KeyError) as exc:  # built by another embedder: re-learned next cycle
                log.warning("route %s: index %s not served: %s", route, version, exc)
                return None
            self._cache[key] = LoadedIndex(version, index)
        loaded: LoadedIndex = self._cache[key]
        return loaded
