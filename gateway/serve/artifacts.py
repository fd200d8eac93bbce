"""The one owner of "serve what was learned": loads each route's current and canary artifacts into the `Augmenter`.

Learners never touch the request path: they write artifacts and transitions to the store and ask
`refresh(route)`; every `[learners] refresh_s` the server reloads every route from the store by
itself, so several replicas converge and changes made by the CLI reach a running gateway.
It also seeds a route's template: on first start, a route with `template = "path"` in
config.toml and no template artifact yet gets version "t0" (the file's text), promoted at once.
A seed file edited later is handed, once per new text, to `on_seed_changed` (the gateway passes it
to the learning side, which publishes it as a hand-authored version through the evaluation gate).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.background import cancel_and_wait
from gateway.config.settings import Settings
from gateway.serve.augment import Augmenter, LoadedIndex, LoadedTemplate, RouteServing, ServingSet
from gateway.serve.embedder import EmbedderHolder
from gateway.serve.templating import CompiledTemplate, Template, TemplateError
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.base import Store
from gateway.store.health import StoreHealth, unavailable
from retrieval.examples import ExampleIndex

log = logging.getLogger("flywheel.serving")


class ArtifactServer:
    """Keeps the augmenter in step with the store's artifact states (a Service of the gateway)."""

    def __init__(self, store: Callable[[], Store | None], augmenter: Augmenter, embedders: EmbedderHolder,
                 settings: Callable[[], Settings], config_dir: Path) -> None:
        self._store = store
        self._registry: ArtifactRegistry | None = None
        self.augmenter = augmenter
        self.embedders = embedders
        self._settings = settings
        self._config_dir = config_dir
        self._cache: dict[tuple[str, str, str], Any] = {}  # (route, kind, version): loaded, immutable
        # (route, new text, file path): called when a seed file's text is no version's source yet
        self.on_seed_changed: Callable[[str, str, str], Awaitable[None]] | None = None
        self._seed_seen: dict[str, str] = {}  # route -> the seed file's text last looked at
        # one refresh of a route at a time: the periodic one and a learner's after a promotion may
        # overlap, and the one that read the store first must not install its older states last
        self._refreshing: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        # the store as the refreshes find it: an outage is one log line when it starts and one when
        # it ends, not a traceback per route every refresh_s (what was loaded keeps serving meanwhile)
        self.health = StoreHealth()

    @property
    def registry(self) -> ArtifactRegistry:
        """The store's artifact registry; RuntimeError before the store is open."""
        if self._registry is None:
            store = self._store()
            if store is None:
                raise RuntimeError("the artifact server is not open (the store is not ready)")
            self._registry = ArtifactRegistry(store)
        return self._registry

    def current(self, route: str) -> ServingSet:
        """What serves `route` outside any canary now (empty when nothing was learned)."""
        serving = self.augmenter.serving(route)
        return serving.current if serving is not None else ServingSet()

    async def start(self) -> None:
        """Service.start: seed and load every route, then follow the store every `refresh_s`."""
        await self.refresh_all()
        self._task = asyncio.create_task(self._run(), name="flywheel-artifacts")

    async def stop(self) -> None:
        """Service.stop."""
        task, self._task = self._task, None
        await cancel_and_wait([task])

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            wake = last + self._settings().learners.refresh_s
            await asyncio.sleep(max(0.05, wake - time.monotonic()))
            if time.monotonic() >= last + self._settings().learners.refresh_s:
                last = time.monotonic()
                await self.refresh_all()  # never raises: one broken route is logged and skipped

    async def seed(self, route: str) -> str | None:
        """Store and promote "t0" from the route's template file if it has no template yet."""
        rs = self._settings().routes.get(route)
        if rs is None or not rs.template:
            return None
        path = Path(rs.template)
        path = path if path.is_absolute() else self._config_dir / path
        if (await self.registry.states(route, "template")).versions:
            await self._seed_file_changed(route, path)
            return None
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

    async def _seed_file_changed(self, route: str, path: Path) -> None:
        """Hand a seed file's text to `on_seed_changed` when no template version has it as its source."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return  # a missing file was reported when it was first seeded; the store keeps serving
        if self._seed_seen.get(route) == text:
            return  # unchanged since last looked at: no store query every refresh
        self._seed_seen[route] = text
        versions = await self.registry.list_versions(route, "template")
        if any(Template.from_body(r.body).source == text for r in versions):
            return
        if self.on_seed_changed is None:
            log.warning("routes.%s.template: %s changed, but no learning runs here to evaluate it; "
                        "`flywheel prompts publish` publishes it", route, path, extra={"event": "seed_changed"})
            return
        await self.on_seed_changed(route, text, str(path))

    def forget_seed(self, route: str) -> None:
        """Look at the route's seed file again on the next refresh (a publish that must be retried)."""
        self._seed_seen.pop(route, None)

    async def refresh(self, route: str) -> RouteServing | None:
        """Reload `route`'s current and canary versions (bodies only for versions not loaded yet)."""
        async with self._refreshing.setdefault(route, asyncio.Lock()):
            return await self._refresh(route)

    async def _refresh(self, route: str) -> RouteServing | None:
        states = await self.registry.all_states(route)
        t, i = states.get("template"), states.get("index")
        cur_t = await self._template(route, t.current) if t else None
        can_t = await self._template(route, t.canary) if t else None
        cur_i = await self._index(route, i.current) if i else None
        can_i = await self._index(route, i.canary) if i else None
        default = self._settings().learners.canary_share  # a canary's share is recorded by the rollout
        t_share = t.versions[t.canary].share if t is not None and t.canary is not None else None
        i_share = i.versions[i.canary].share if i is not None and i.canary is not None else None
        serving = RouteServing(ServingSet(cur_t, cur_i), can_t, can_i, default if t_share is None else t_share,
                               default if i_share is None else i_share)
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
            except Exception as exc:
                if unavailable(exc):
                    self.health.failed(exc, "artifact refresh")
                    return  # every other route would fail the same way; the next refresh tries again
                log.exception("route %s: refreshing artifacts failed", route)  # one broken route, not the others
            else:
                self.health.ok()

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
