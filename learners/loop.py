"""The learning loop: a gateway Service that learns per route and keeps the augmenter current.

On start it installs the live `Augmenter` into the pipeline (templates render even with learning
disabled), seeds "t0" templates and loads every route's current and canary artifacts. With
`[learners] enabled`, it then wakes every `interval_s`: for each route that may learn, it runs a
cycle once `min_new_feedback` feedback rows arrived since the last one (or, with
`learn_on_correction`, as soon as a correction did), and otherwise only decides running canaries.
Every `refresh_s` it reloads artifact states from the store, so several replicas converge and
changes made by the CLI reach a running gateway. `learn_route` runs one cycle on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.augment import Augmenter, ServingSet
from gateway.background import cancel_and_wait
from gateway.route_policy import online_learning
from gateway.serving import ServingLoader
from learners.artifacts import ArtifactRegistry
from learners.cycle import CycleDeps, LearningCycle, LearnReport
from learners.embeddings import Embedder
from learners.rollout import Rollout, RolloutDecision

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.privacy.scrubber import Scrubber

log = logging.getLogger("flywheel.learners")


class UnknownRoute(KeyError):
    """A route that is not configured (or whose learning is frozen with `learn = false`)."""


class LearningLoop:
    """The Service behind templates, retrieval and learning for one gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.embedders = gw.embedders
        self.augmenter = Augmenter(lambda: gw.settings, self.embedders.embed_fn)
        self._registry: ArtifactRegistry | None = None
        self._loader: ServingLoader | None = None
        self._rollout: Rollout | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_run: dict[str, float] = {}
        self._blocked: dict[tuple[str, str, str], frozenset[str]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def registry(self) -> ArtifactRegistry:
        if self._registry is None:
            raise RuntimeError("the learning loop is not open (the store is not ready)")
        return self._registry

    @property
    def loader(self) -> ServingLoader:
        if self._loader is None:
            raise RuntimeError("the learning loop is not open (the store is not ready)")
        return self._loader

    @property
    def rollout(self) -> Rollout:
        if self._rollout is None:
            raise RuntimeError("the learning loop is not open (the store is not ready)")
        return self._rollout

    async def open(self) -> None:
        """Attach to the store, install the augmenter, seed and load artifacts (no background task)."""
        assert self.gw.store is not None
        self._registry = ArtifactRegistry(self.gw.store)
        self._rollout = Rollout(self._registry, lambda: self.gw.settings.learners)
        config_dir = self.gw.config_path.parent if self.gw.config_path else Path.cwd()
        self._loader = ServingLoader(self._registry, self.augmenter, self.embedders, lambda: self.gw.settings,
                                     config_dir)
        self.gw.augmenter = self.augmenter
        self.gw.pipeline.augmenter = self.augmenter
        await self._loader.refresh_all()
        now = time.time()
        for route in self.gw.settings.routes:
            self._last_run.setdefault(route, now)

    async def start(self) -> None:
        """Service.start: open, then run the schedule in the background."""
        await self.open()
        self._task = asyncio.create_task(self._run(), name="flywheel-learners")

    async def stop(self) -> None:
        """Service.stop: end the schedule (a cycle in progress is cancelled)."""
        task, self._task = self._task, None
        await cancel_and_wait([task])

    # -- schedule -------------------------------------------------------------------------------
    async def _run(self) -> None:
        last_learn = last_refresh = time.monotonic()
        while True:
            cfg = self.gw.settings.learners
            wake = min(last_learn + cfg.interval_s, last_refresh + cfg.refresh_s)
            await asyncio.sleep(max(0.05, wake - time.monotonic()))
            now = time.monotonic()
            try:
                if now >= last_refresh + cfg.refresh_s:
                    last_refresh = now
                    await self.loader.refresh_all()
                if now >= last_learn + cfg.interval_s:
                    last_learn = now
                    if cfg.enabled:
                        await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive one bad cycle
                log.exception("learning loop iteration failed")

    async def tick(self) -> list[LearnReport]:
        """One scheduled pass over every route that may learn."""
        reports = []
        cfg = self.gw.settings.learners
        for route, rs in self.gw.settings.routes.items():
            if not rs.learn:
                continue
            if self.gw.capture.new_feedback[route] >= max(1, cfg.min_new_feedback) or (
                    cfg.learn_on_correction and await self._correction_since(route)):
                reports.append(await self.learn_route(route))
            elif await self._decide(route):
                await self.loader.refresh(route)
        return reports

    async def _correction_since(self, route: str) -> bool:
        assert self.gw.store is not None
        since = self._last_run.get(route, 0.0)
        return any(fb.correction and fb.source == "user"
                   for fb in await self.gw.store.list_feedback(route=route, since=since))

    async def _decide(self, route: str) -> list[RolloutDecision]:
        async with self._lock(route):
            return [d for d in await self.rollout.check(route) if d.action != "waiting"]

    def _lock(self, route: str) -> asyncio.Lock:
        return self._locks.setdefault(route, asyncio.Lock())

    # -- on demand ------------------------------------------------------------------------------
    async def learn_route(self, route: str) -> LearnReport:
        """Run one full cycle for `route` now: canary decisions, then new candidates."""
        rs = self.gw.settings.routes.get(route)
        if rs is None:
            raise UnknownRoute(route)
        if self.gw.writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gw.writer.flush(), 10.0)  # learn from what has arrived
        async with self._lock(route):
            started = time.time()
            self.gw.capture.new_feedback[route] = 0
            decisions = await self.rollout.check(route)
            if any(d.action != "waiting" for d in decisions):
                await self.loader.refresh(route)
            cycle = LearningCycle(self._deps(), self.gw.settings.learners, route, rs)
            try:
                report = await cycle.learn()
            finally:
                self._last_run[route] = started
                await self.loader.refresh(route)
            report.rollout = decisions + report.rollout
            if rs.policy.kind == "learned":  # the routing learner shares the cycle (learners/routing.py)
                n = online_learning(rs.policy.params()).replays
                replays = await cycle.routing_replays(n, self.gw.routing.embed_many)
                report.policy = await self.gw.routing.learn(route, replays)
            for c in report.candidates:
                log.info("route %s: %s %s %s: %s", route, c.kind, c.version, c.outcome, c.reason)
            return report

    async def rollback(self, route: str, version: str | None = None,
                       reason: str = "rolled back by admin") -> RolloutDecision:
        """Undo a canary or promoted version at once and serve what is current afterwards."""
        if route not in self.gw.settings.routes:
            raise UnknownRoute(route)
        async with self._lock(route):
            decision = await self.rollout.rollback(route, version, reason)
            await self.loader.refresh(route)
            return decision

    # -- what a cycle needs ---------------------------------------------------------------------
    def _deps(self) -> CycleDeps:
        return CycleDeps(
            registry=self.registry, rollout=self.rollout, runtime=lambda: self.gw.runtime,
            embedder=self._embedder, embed_fn=self.embedders.embed_fn, scrubber=self._scrubber,
            current=self._current, blocked=self._blocked_ids,
        )

    async def _embedder(self) -> Embedder:
        return await self.embedders.get()

    async def _scrubber(self) -> Scrubber | None:
        return await asyncio.to_thread(lambda: self.gw.capture.scrubber)

    def _current(self, route: str) -> ServingSet:
        serving = self.augmenter.serving(route)
        return serving.current if serving is not None else ServingSet()

    async def _blocked_ids(self, route: str) -> set[str]:
        """Example ids a rolled-back artifact, or one rejected for scoring below current, introduced.

        They stay out of later datasets, so a poisoned batch is not proposed again each cycle.
        """
        out: set[str] = set()
        for kind, ks in (await self.registry.all_states(route)).items():
            for version, st in ks.versions.items():
                if st.state not in ("rolled_back", "rejected"):
                    continue
                key = (route, kind, version)
                if key not in self._blocked:  # terminal states: the answer never changes
                    rec = await self.registry.get(route, kind, version)
                    ev = rec.evaluation if rec is not None and isinstance(rec.evaluation, dict) else {}
                    offline = ev.get("offline") or {}
                    worse = offline.get("verdict") == "regression" or (
                        offline.get("verdict") == "no_gain" and offline.get("delta", 0.0) < 0)
                    blocks = st.state == "rolled_back" or worse
                    self._blocked[key] = frozenset(ev.get("added", [])) if blocks else frozenset()
                out |= self._blocked[key]
        return out
