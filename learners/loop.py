"""The learning loop: a Service beside the gateway that learns per route (`LearningControl` for the admin API).

It sees the gateway only through `LearningHost` (gateway/learning.py). With `[learners] enabled`
it wakes when feedback arrives (at most once a second) and every few seconds: for each route
that may learn, it runs a cycle once
`min_new_feedback` feedback rows arrived since the last one (looked at every `interval_s`) or,
with `learn_on_correction`, as soon as a correction did (each route's cycles in tasks of their own:
routes learn side by side; a route in two lanes, `tick`, one cycle per lane at a time), and
otherwise checks running canaries (learners/rollout.py: promote, roll back, or grow their share). What a cycle or a
decision changes is written to the store; the gateway's artifact server
(gateway/serve/artifacts.py) then serves it, at once for this gateway (`refresh`) and within
`refresh_s` for every other replica. `learn_route` runs one cycle on demand; policy learning
for learned routes runs in `RoutingLearner` (learners/routing_cycle.py).

Across replicas the schedule runs only where the learner lease is held (learners/lease.py), and
what a scheduled cycle or canary decision writes goes through a fenced store
(learners/fencing.py): a replica that lost the lease mid-cycle cannot write artifacts. Every cycle,
scheduled or on demand (`POST /admin/learn`, on the replica asked), first takes its route's cycle
lock on the lease's backend (`Lease.hold_route`, learners/route_lock.py) and writes through a store
fenced by it (a scheduled cycle's by the lease as well): two cycles of one route never overlap
across replicas. Where another replica's cycle holds the lock, the cycle is not run and its report
says `busy` in `skipped`. A person's controls write through the plain store.

Canary decisions (promote, roll back, grow the share) run in a task of their own, not behind a
cycle: a cycle holds its route's lock for its whole run (minutes on a slow upstream), decisions
take only the rollout's lock (learners/rollout.py), which a cycle holds just while it starts a
canary. They run every `_DECIDE_S` seconds and within `_DECIDE_MIN_S` of feedback arriving
(`LearningHost.on_feedback`), on the lease holder only, their writes fenced like a cycle's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from gateway.background import cancel_and_wait
from gateway.learning import LearningHost, RouteFlags, UnknownRoute
from gateway.observability.tracing import cycle_span
from gateway.serve.augment import ServingSet
from gateway.serve.route_policy import online_learning
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.base import Store
from learners.canary_facts import blamed, evaluation_of
from learners.controls import Controls
from learners.cycle import CycleDeps, Lane, LearningCycle
from learners.economy import Economy
from learners.fencing import AllOf, Fence, FencedStore, LeaseLost
from learners.lease import Lease, open_lease
from learners.report import LearnReport
from learners.rollout import Rollout, RolloutDecision
from learners.routing_cycle import RoutingLearner
from retrieval.embeddings import Embedder

if TYPE_CHECKING:
    from gateway.config.settings import RouteSettings
    from gateway.privacy.scrubber import Scrubber
    from learners.route_lock import RouteHold

log = logging.getLogger("flywheel.learners")
_POLL_S = 5.0  # how often the loop looks for corrections
_DECIDE_S = 5.0  # how often running canaries are decided without new feedback
_DECIDE_MIN_S = 1.0  # fewest seconds between two decision passes (feedback arrives in bursts)
_LEARN_MIN_S = 1.0  # fewest seconds between two scheduled passes


def count_cycle(route: str, decisions: list[RolloutDecision], *, started: bool) -> None:
    """flywheel_learner_* series: a cycle started, and the promotions and rollbacks it decided."""
    from gateway.observability import metrics

    if started:
        metrics.LEARNER_CYCLES.labels(route).inc()
    for d in decisions:
        if d.action == "promoted":
            metrics.PROMOTIONS.labels(route, d.kind).inc()
        elif d.action == "rolled_back":
            metrics.ROLLBACKS.labels(route, d.kind).inc()


class LearningLoop:
    """The Service behind learning for one gateway."""

    def __init__(self, host: LearningHost) -> None:
        self.host = host
        self.routing = RoutingLearner(host)
        # one learner at a time across replicas (learners/lease.py): scheduled work runs only while held
        lim = host.settings.limits
        self.lease: Lease = open_lease(lim.redis_url, prefix=lim.prefix, ttl_s=lim.lease_s,
                                       store_url=host.settings.store.url)
        self.routing.leader = self.lease.held
        self.routing.fence = self.lease  # its canary decisions are the schedule's: fenced by the lease
        self._registry: ArtifactRegistry | None = None
        self._rollout: Rollout | None = None
        self._scheduled: tuple[ArtifactRegistry, Rollout] | None = None  # writes fenced by the lease
        self._locks: dict[str, asyncio.Lock] = {}
        self._rollout_locks: dict[str, asyncio.Lock] = {}  # begin / check / rollback, per route
        self._wake = asyncio.Event()  # feedback arrived: decide canaries soon
        self._learn_wake = asyncio.Event()  # feedback arrived: look for corrections to learn from
        self._decider: asyncio.Task[None] | None = None
        self._last_run: dict[str, float] = {}
        self._blocked: dict[tuple[str, str, str], frozenset[str]] = {}
        # evaluation memo, cache, upstream gate (replays yield to live calls on few-slot upstreams)
        self.economy = Economy(lambda: self.host.settings.learners, host.live_activity)
        self._task: asyncio.Task[None] | None = None
        self._cycles: dict[str, asyncio.Task[None]] = {}  # each route's "grow" lane in flight
        self._evals: dict[str, asyncio.Task[None]] = {}  # each route's "full" lane in flight
        self._running = 0  # cycles in progress, scheduled or on demand
        # a person's controls (console, CLI): learners/controls.py
        self.controls = Controls(host, lambda: self.registry, lambda: self.rollout, self._lock, self._deps)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def cycles_running(self) -> int:
        """Learning cycles in progress in this process, any route or lane."""
        return self._running

    @property
    def registry(self) -> ArtifactRegistry:
        """The store's artifact registry; RuntimeError before the loop is open."""
        if self._registry is None:
            raise RuntimeError("the learning loop is not open (the store is not ready)")
        return self._registry

    @property
    def rollout(self) -> Rollout:
        """Canary decisions for templates and indices; RuntimeError before the loop is open."""
        if self._rollout is None:
            raise RuntimeError("the learning loop is not open (the store is not ready)")
        return self._rollout

    async def open(self) -> None:
        """Attach to the gateway's store (no background task)."""
        store = self.host.open_store()
        self._registry = ArtifactRegistry(store)
        self._rollout = Rollout(self._registry, lambda: self.host.settings.learners, self._rollout_lock)
        fenced = ArtifactRegistry(cast(Store, FencedStore(store, self.lease)))  # delegates all but its writes
        self._scheduled = (fenced, Rollout(fenced, lambda: self.host.settings.learners, self._rollout_lock))
        now = time.time()
        for route in self.host.settings.routes:
            self._last_run.setdefault(route, now)

    async def start(self) -> None:
        """Service.start: open, then run the schedule (and the routing learner) in the background."""
        await self.open()
        await self.lease.start()
        await self.routing.start()
        self._task = asyncio.create_task(self._run(), name="flywheel-learners")
        self.host.on_feedback(self._wake.set)
        self.host.on_feedback(self._learn_wake.set)
        self._decider = asyncio.create_task(self._decide_loop(), name="flywheel-canary-decisions")

    async def stop(self) -> None:
        """Service.stop: end the schedule (a cycle in progress is cancelled)."""
        tasks = [self._task, self._decider, *self._cycles.values(), *self._evals.values()]
        self._task, self._decider, self._cycles, self._evals = None, None, {}, {}
        await cancel_and_wait(tasks)
        await self.routing.stop()
        await self.lease.stop()

    # -- schedule -------------------------------------------------------------------------------
    async def _run(self) -> None:
        last = time.monotonic()

        async def scheduled_pass() -> None:
            nonlocal last  # ordinary feedback is learned from every interval_s, corrections at once
            due = time.monotonic() - last >= self.host.settings.learners.interval_s
            last = time.monotonic() if due else last
            await self.tick(due=due)

        # Woken by feedback: on a busy route a fixed poll lets hundreds of calls pass before a
        # correction is learned from.
        await self._passes(self._learn_wake, lambda: max(0.05, min(self.host.settings.learners.interval_s, _POLL_S)),
                           _LEARN_MIN_S, scheduled_pass, "learning loop iteration")

    async def _passes(self, wake: asyncio.Event, period: Callable[[], float], rest_s: float,
                      work: Callable[[], Awaitable[object]], what: str) -> None:
        """Run `work` when `wake` is set, else every `period()` seconds, then rest `rest_s` (a burst
        of feedback makes one pass, not one per row); only with learning enabled on the lease
        holder, the feedback that woke it flushed first (it must be readable in the store), and
        outliving a pass that fails."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), period())
            woken = wake.is_set()
            wake.clear()
            try:
                if self.host.settings.learners.enabled and self.lease.held():
                    if woken:
                        await self.host.flush_captured(2.0)
                    await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", what)
            await asyncio.sleep(rest_s)

    async def tick(self, *, due: bool = True) -> list[str]:
        """One scheduled pass over every route that may learn: a cycle where a correction arrived
        (or, when `due`, `min_new_feedback` feedback rows). Each route's cycle runs in tasks of its
        own, so one route's long evaluation never holds back another's first examples: its "grow"
        lane (indices that only add examples, judged online: seconds) and, once that is done, its
        "full" lane (replayed evaluations: minutes), which a correction arriving meanwhile does not
        wait for. A lane still running is left to itself. Returns the routes whose cycle started.
        Canaries are decided by `_decide_loop`."""
        started = []
        cfg = self.host.settings.learners
        await self.host.route_pending_feedback()  # 202 feedback counts for its route once its call is readable
        for route, rs in self.host.settings.routes.items():
            if not rs.learn or not (self._idle(self._cycles, route) or self._idle(self._evals, route)):
                continue
            flags = await self.controls.route_flags(route)  # frozen: no cycle; paused: no decision
            enough = due and self.host.new_feedback().get(route, 0) >= max(1, cfg.min_new_feedback)
            if flags.frozen or not (enough or (cfg.learn_on_correction and await self._correction_since(route))):
                continue
            if self._idle(self._cycles, route):
                self._cycles[route] = asyncio.create_task(self._scheduled_cycle(route, "grow"),
                                                          name=f"flywheel-grow-{route}")
            if self._idle(self._evals, route):
                self._evals[route] = asyncio.create_task(self._scheduled_cycle(route, "full", self._cycles[route]),
                                                         name=f"flywheel-learn-{route}")
            started.append(route)
        return started

    @staticmethod
    def _idle(lanes: dict[str, asyncio.Task[None]], route: str) -> bool:
        task = lanes.get(route)
        return task is None or task.done()

    async def _scheduled_cycle(self, route: str, lane: Lane, after: asyncio.Task[None] | None = None) -> None:
        try:
            if after is not None:  # the full lane starts from what the grow lane served
                await asyncio.wait({after})
            await self.learn_route(route, scheduled=True, lane=lane)
        except asyncio.CancelledError:
            raise
        except Exception:  # one route's failed cycle must not end the others' schedule
            log.exception("route %s: %s learning cycle failed", route, lane)

    async def _decide_loop(self) -> None:
        """Decide running canaries beside any cycle: every `_DECIDE_S`, sooner after feedback."""
        await self._passes(self._wake, lambda: _DECIDE_S, _DECIDE_MIN_S, self.decide_all, "canary decision pass")

    async def decide_all(self) -> list[RolloutDecision]:
        """One pass of canary decisions over every route that may learn and is not paused (the
        schedule's: writes fenced by the lease); a route whose canaries changed is served anew."""
        out: list[RolloutDecision] = []
        for route, rs in self.host.settings.routes.items():
            if not rs.learn or (await self.controls.route_flags(route)).paused:
                continue
            decisions = await self._decide(route)
            if decisions:
                await self.host.serving.refresh(route)
            out += decisions
        return out

    async def _correction_since(self, route: str) -> bool:
        since = self._last_run.get(route, 0.0)
        return any(fb.correction and fb.source == "user"
                   for fb in await self.host.open_store().list_feedback(route=route, since=since))

    async def _decide(self, route: str) -> list[RolloutDecision]:
        # the rollout's lock only (inside check): never behind the route's running cycle
        decisions = [d for d in await self._deps(scheduled=True).rollout.check(route)
                     if d.action != "waiting" or d.share is not None]
        count_cycle(route, decisions, started=False)  # scheduled canary decisions count like a cycle's
        return decisions

    def _lock(self, route: str) -> asyncio.Lock:
        return self._locks.setdefault(route, asyncio.Lock())

    def _rollout_lock(self, route: str) -> asyncio.Lock:
        return self._rollout_locks.setdefault(route, asyncio.Lock())

    # -- on demand ------------------------------------------------------------------------------
    async def learn_route(self, route: str, *, scheduled: bool = False, lane: Lane = "full") -> LearnReport:
        """Run one cycle for `route` now: canary decisions, then new candidates (`scheduled`:
        the schedule's, its writes fenced by the lease; `lane`: learners/cycle.py). Each lane has
        a lock of its own, in this process and across replicas."""
        rs = self.host.settings.routes.get(route)
        if rs is None:
            raise UnknownRoute(route)
        if (frozen := await self.controls.frozen_report(route)) is not None:
            return frozen
        await self.host.flush_captured(10.0)  # learn from what has arrived
        key = route if lane == "full" else f"{route}#{lane}"
        async with self._lock(key):
            hold = await self._hold(route, key)  # the route's cycle lock, shared by every replica
            if isinstance(hold, LearnReport):
                return hold
            fence: Fence = AllOf(self.lease, hold) if scheduled else hold
            self._running += 1
            try:
                with cycle_span(self.host.tracing, route) as span:
                    report = await self._learn_locked(route, rs, scheduled, fence, lane)
                    if span is not None:
                        span.set_attributes({
                            "flywheel.candidates": len(report.candidates),
                            "flywheel.promotions": sum(d.action == "promoted" for d in report.rollout),
                            "flywheel.rollbacks": sum(d.action == "rolled_back" for d in report.rollout),
                            "flywheel.eval_calls": report.eval_calls})
                    return report
            except LeaseLost as exc:  # deposed mid-cycle: what is left unwritten stays so
                log.warning("route %s: cycle stopped: %s", route, exc)
                report = LearnReport(route, time.time())
                report.skipped.append(f"busy: the cycle stopped, {exc}; another replica runs this route's cycle")
                return report
            finally:
                self._running -= 1
                await hold.release()

    async def _hold(self, route: str, key: str) -> RouteHold | LearnReport:
        """The cycle lock `key` of `route`'s lane, or the report of a cycle not run because another
        replica holds it."""
        try:
            hold = await self.lease.hold_route(key)
        except Exception as exc:  # the lock's backend unreachable: running unlocked could duplicate
            log.error("route %s: the cycle lock could not be taken (%s); no cycle run", route, exc)
            hold, why = None, f"the route's cycle lock could not be taken ({type(exc).__name__}: {exc})"
        else:
            why = "another replica is running this route's learning cycle"
        if hold is not None:
            return hold
        report = LearnReport(route, time.time())
        report.skipped.append(f"busy: {why}; no cycle run here")
        return report

    async def _learn_locked(self, route: str, rs: RouteSettings, scheduled: bool = False,
                            fence: Fence | None = None, lane: Lane = "full") -> LearnReport:
        """learn_route's cycle, under the lane's lock; its writes fenced by `fence` (None: unfenced)."""
        deps = self._deps(scheduled=scheduled, fence=fence)
        started = time.time()
        count_cycle(route, [], started=True)
        self.host.reset_new_feedback(route)
        paused = (await self.controls.route_flags(route)).paused
        # the grow lane leaves canary decisions to `_decide_loop`: it is to serve a correction in seconds
        decisions = [] if paused or lane == "grow" else await deps.rollout.check(route)
        if any(d.action != "waiting" for d in decisions):
            await self.host.serving.refresh(route)
        cycle = LearningCycle(deps, self.host.settings.learners, route, rs, lane)
        try:
            report = await cycle.learn()
        finally:
            if lane == "grow" or not scheduled:  # what the next scheduled pass looks for corrections after
                self._last_run[route] = started
            await self.host.serving.refresh(route)
        report.rollout = decisions + report.rollout
        if rs.policy.kind == "learned" and lane == "full":  # the routing learner shares the cycle (learners/routing.py)
            n = online_learning(rs.policy.params()).replays
            replays = await cycle.routing_replays(n, self.host.routing.embed_many)
            report.policy = await self.routing.learn(route, replays, store=deps.registry.store)
        log.info("route %s: cycle %.1fs; evaluation %d calls, %d cached, %d skipped, %d saved by halving, $%.4f",
                 route, report.duration_s, report.eval_calls, report.eval_cached, len(report.eval_skipped),
                 report.eval_saved, report.eval_cost_usd)
        for c in report.candidates:
            log.info("route %s: %s %s %s: %s", route, c.kind, c.version, c.outcome, c.reason)
        count_cycle(route, report.rollout, started=False)
        return report

    async def rollback(self, route: str, version: str | None = None,
                       reason: str = "rolled back by admin") -> RolloutDecision:
        """Undo a canary or promoted version at once and serve what is current afterwards."""
        if route not in self.host.settings.routes:
            raise UnknownRoute(route)
        async with self._lock(route):
            decision = await self.rollout.rollback(route, version, reason)
            await self.host.serving.refresh(route)
            count_cycle(route, [decision], started=False)
            return decision

    # -- a person's controls (LearningControl; learners/controls.py) ------------------------------
    async def promote(self, route: str, version: str, *, who: str, note: str) -> RolloutDecision:
        """Promote a running canary now."""
        decision = await self.controls.promote(route, version, who=who, note=note)
        count_cycle(route, [decision], started=False)
        return decision

    async def roll_back(self, route: str, version: str | None, *, who: str, note: str) -> RolloutDecision:
        """Roll back a canary or a promoted version, recording who and why."""
        decision = await self.controls.roll_back(route, version, who=who, note=note)
        count_cycle(route, [decision], started=False)
        return decision

    async def set_paused(self, route: str, paused: bool, *, who: str, note: str) -> None:
        """Pause or resume the route's automatic canary decisions."""
        await self.controls.set_paused(route, paused, who=who, note=note)

    async def set_frozen(self, route: str, frozen: bool, *, who: str, note: str) -> None:
        """Freeze or unfreeze learning for the route."""
        await self.controls.set_frozen(route, frozen, who=who, note=note)

    async def route_flags(self, route: str) -> RouteFlags:
        """The route's freeze and pause states."""
        return await self.controls.route_flags(route)

    async def publish_template(self, route: str, source: str, *, who: str, note: str) -> RolloutDecision:
        """A hand-written template version through guardrails, the evaluation gate and the canary."""
        return await self.controls.publish_template(route, source, who=who, note=note)

    async def cluster_texts(self, route: str, texts: list[str]) -> list[list[int]]:
        """Groups of similar texts, as the template learner clusters corrections."""
        return await self.controls.cluster_texts(route, texts)

    # -- what a cycle needs ---------------------------------------------------------------------
    def _deps(self, *, scheduled: bool = False, fence: Fence | None = None) -> CycleDeps:
        registry, rollout = (self.registry, self.rollout) if not scheduled or self._scheduled is None \
            else self._scheduled
        if fence is not None:  # a cycle's writes: fenced by its route's hold (and the lease, when scheduled)
            registry = ArtifactRegistry(cast(Store, FencedStore(self.registry.store, fence)))
            rollout = Rollout(registry, lambda: self.host.settings.learners, self._rollout_lock)
        return CycleDeps(
            registry=registry, rollout=rollout, runtime=lambda: self.host.runtime,
            embedder=self._embedder, embed_fn=self.host.embedders.embed_fn, scrubber=self._scrubber,
            current=self._current, blocked=self._blocked_ids, economy=self.economy,
            refresh=self.host.serving.refresh,
        )

    async def _embedder(self) -> Embedder:
        return self.economy.embedder(await self.host.embedders.get())

    async def _scrubber(self) -> Scrubber | None:
        return await self.host.scrubber()

    def _current(self, route: str) -> ServingSet:
        return self.host.serving.current(route)

    async def _blocked_ids(self, route: str) -> set[str]:
        """Example ids a rolled-back artifact is blamed for (learners/canary_facts.py `blamed`).

        They stay out of later datasets, so a poisoned batch is not proposed again each cycle. An
        offline refusal blocks nothing: it may come from a candidate's retrieval settings or a few
        noisy held-out calls, while its examples are served by the running canary on online
        evidence (blocking them stopped a route's growth for the rest of a bench pass).
        """
        out: set[str] = set()
        for kind, ks in (await self.registry.all_states(route)).items():
            for version, st in ks.versions.items():
                if st.state != "rolled_back":
                    continue
                key = (route, kind, version)
                if key not in self._blocked:  # terminal state: the answer never changes
                    rec = await self.registry.get(route, kind, version)
                    self._blocked[key] = frozenset(blamed(evaluation_of(rec)))
                out |= self._blocked[key]
        return out
