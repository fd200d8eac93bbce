"""The learning half of learned routing: the start-up rebuild, policy candidates and their canary decisions.

- At start, each learned route's policy is rebuilt from the store (`fit_policy`): its online
  memory died with the process. The rebuilt state replaces what the last promoted version held,
  so that version is marked live without being loaded.
- `learn(route, replays)` runs one policy-learning cycle (learners/routing.py: candidate, offline
  evaluation, canary); evaluation replays are learned online first and kept (bounded, newest
  last, lost on restart) to join every later candidate's data.
- Every `poll_s`, with `[learners] enabled`, a running policy canary with enough feedback is
  promoted or rolled back by the one rollout mechanism (learners/rollout.py, arm field
  `policy_version`, metric the route's `quality_metric`); the router then serves what was decided.

Its writes are fenced (learners/fencing.py): a cycle's policy candidate by the cycle's store (its
route's cycle lock, and the lease for a scheduled cycle), the canary decisions by the learner lease
(`fence`), so a replica deposed mid-write cannot write over its successor's policy versions.

It reaches the request path only through `LearnedRouting`'s learning interface (`live_policy`,
`hold_version`, `adopt`, `observe_replays`, `sync_artifacts`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

from gateway.background import cancel_and_wait
from gateway.learning import LearningHost
from gateway.serve.outcomes import Replay
from gateway.serve.route_policy import online_learning
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.base import Store
from learners.fencing import Fence, FencedStore
from learners.rollout import Rollout
from learners.routing import LearnResult, fit_policy, learn_policy
from learners.routing_data import load_examples

log = logging.getLogger("flywheel.routing")


class RoutingLearner:
    """Policy learning for every learned route of one gateway (a part of the learning loop)."""

    def __init__(self, host: LearningHost, *, rebuild_calls: int = 5000, memory: int = 20_000,
                 poll_s: float = 5.0) -> None:
        self.host = host
        self._rebuild_calls = rebuild_calls
        self._memory = memory
        self._poll_s = poll_s
        self._replays: dict[str, deque[Replay]] = {}  # route -> evaluation replays, oldest first
        self._tasks: list[asyncio.Task[None]] = []
        self._rollout: Rollout | None = None
        self.leader: Callable[[], bool] = lambda: True  # the loop hands it the learner lease
        self.fence: Fence | None = None  # …and fences the canary decisions' writes with it

    @property
    def rollout(self) -> Rollout:
        """The rollout mechanism over the gateway's store (made on first use: the store opens late)."""
        if self._rollout is None:
            store = self.host.open_store()
            if self.fence is not None:  # a deposed leader's decisions are refused (learners/fencing.py)
                store = cast(Store, FencedStore(store, self.fence))
            self._rollout = Rollout(ArtifactRegistry(store), lambda: self.host.settings.learners)
        return self._rollout

    async def start(self) -> None:
        """Rebuild the learned routes' policies and decide their canaries, in the background."""
        self._tasks.append(asyncio.create_task(self._startup(), name="flywheel-routing-rebuild"))
        self._tasks.append(asyncio.create_task(self._run(), name="flywheel-routing-canaries"))

    async def stop(self) -> None:
        """Stop the background work."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def _startup(self) -> None:
        routing = self.host.routing
        registry = ArtifactRegistry(self.host.open_store())
        for name in routing.learned_routes():
            # the rebuild below supersedes the last promoted version's state: do not load it again
            routing.hold_version(name, (await registry.states(name, "policy")).current)
            try:
                if not await self.rebuild(name):
                    routing.hold_version(name, None)  # nothing to rebuild from: the next sync loads it
            except Exception:
                log.exception("routes.%s: rebuilding the policy from the store failed", name)

    async def rebuild(self, route: str) -> int:
        """Train the route's live policy from its stored calls and feedback; returns examples used."""
        routing = self.host.routing
        live = routing.live_policy(route)
        rs = self.host.settings.routes.get(route)
        if live is None or rs is None:
            return 0
        cfg = online_learning(rs.policy.params())
        examples = await load_examples(self.host.open_store(), route, routing.embed_many,
                                       metric=live.quality_metric, unrated=cfg.unrated,
                                       unrated_after_s=cfg.unrated_after_s, limit=self._rebuild_calls)
        fitted = await asyncio.to_thread(fit_policy, live, examples) if examples else None
        routing.adopt(route, fitted, len(examples))
        return len(examples)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            if not self.leader():  # another replica holds the learner lease (learners/lease.py)
                continue
            try:
                await self.decide_canaries()
            except Exception:  # the schedule must outlive one failed read of the store
                log.exception("deciding policy canaries failed; will retry")

    async def decide_canaries(self) -> None:
        """Promote or roll back running policy canaries that have their evidence (learning enabled)."""
        learners = self.host.settings.learners
        if not learners.enabled:
            return
        routing = self.host.routing
        decided = False
        for route in routing.learned_routes():
            live = routing.live_policy(route)
            if live is None or (await self.rollout.registry.states(route, "policy")).canary is None:
                continue
            for d in await self.rollout.check(route, ("policy",), live.quality_metric):
                if d.action != "waiting":
                    decided = True
                    log.info("routes.%s: policy %s %s: %s", route, d.version, d.action, d.reason)
        if decided:
            await routing.sync_artifacts()

    async def learn(self, route: str, replays: Sequence[Replay] = (), *, store: Store | None = None) -> LearnResult:
        """One policy-learning cycle for `route` now (learners/routing.py), then follow its outcome;
        `replays` from this cycle are learned online first and join the candidate's data. `store`:
        what the candidate and its rollout are written through (the cycle's fenced store; default
        the gateway's); a refused write raises `LeaseLost` (learners/fencing.py)."""
        routing = self.host.routing
        live = routing.live_policy(route)
        rs = self.host.settings.routes.get(route)
        if live is None or rs is None:
            return LearnResult(route, "skipped", "not a learned route, or the store is not open")
        routing.observe_replays(route, replays)
        kept = self._replays.setdefault(route, deque(maxlen=self._memory))
        kept.extend(replays)
        cfg = online_learning(rs.policy.params())
        result = await learn_policy(store or self.host.open_store(), route, live, routing.embed_many,
                                    learner=self.host.settings.learners, current_version=routing.live_version(route),
                                    unrated=cfg.unrated, unrated_after_s=cfg.unrated_after_s,
                                    limit=self._rebuild_calls, replays=list(kept))
        await routing.sync_artifacts()
        return result
