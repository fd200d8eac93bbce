"""Learned routing on the request path, and online learning from feedback beside it (the serving half).

Request path (`decide`, only for routes whose policy is a `LearnedPolicy`): when the policy looks at
embeddings (dims > 0) the last user message is embedded by the gateway's one embedder (the one
retrieval used a moment before, so its cache answers; a worker thread otherwise: the event loop
never blocks); the policy chooses; the request's Features are remembered in a bounded LRU keyed by
call id. A slow, busy or still loading embedder never holds a request up for longer than
`embed_timeout_s`: the policy then decides without the embedding (`stats.embed_missing`).

Online learning (`feedback`, fed by Capture for explicit and inferred feedback): rows are queued
and a background task applies them: the remembered Features, the variant that answered and the
call's cost_usd go to `policy.update` with the quality the route's `quality_metric` gives
(gateway/capture/quality.py). The first row that says something under the metric updates the
policy; later rows about the same call do not (the policy learner, which reads every row, uses the
newest). Calls without feedback: with `unrated = "ok"` in the route's policy table a call that
got no usable feedback within `unrated_after_s` counts as quality 1.0; with "ignore" (default)
it teaches nothing. Replays (`observe_replays`: held-out calls answered by every variant and
scored by the learning cycle) update the policy like feedback does, for each variant.

Many replicas (gateway/serve/routing_share.py, with `[limits] redis_url`): every update a replica
makes is sent through a Redis stream and applied by every other replica to its live policy, and
feedback about a call this replica does not remember is forwarded to the one that does, so the
feedback any replica receives reaches the policy that decides on all of them.

Artifacts: every `artifact_poll_s` the router follows the `policy` artifact states
(gateway/serve/policy_versions.py: canary share, promotion, rollback). The learning half (the
start-up rebuild from the store, policy candidates and their canary decisions) lives in
learners/routing_cycle.py and reaches this class only through its public methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.background import cancel_and_wait
from gateway.capture.quality import feedback_quality
from gateway.messages import query_text
from gateway.providers.base import Body
from gateway.serve.embedder import EmbedderHolder
from gateway.serve.outcomes import Replay, call_outcomes
from gateway.serve.policy_versions import PolicyVersions
from gateway.serve.route_policy import OnlineLearning, online_learning
from gateway.serve.routing_share import RoutingShare, Update
from gateway.serve.runtime import RouteRuntime, Runtime
from gateway.store.base import Store
from gateway.store.records import CallRecord, Escalation, FeedbackRecord
from policies.base import Decision, Features
from policies.carry import carry_state
from policies.learned import LearnedPolicy
from retrieval.embeddings import EmbedderBusy, threaded

log = logging.getLogger("flywheel.routing")


@dataclass(slots=True)
class _Seen:
    """What is remembered of one routed call until its feedback arrives."""

    route: str
    features: Features
    variant: str | None = None  # the variant that answered; None until the call ended with a 200
    cost: float | None = None
    escalation: Escalation | None = None
    ended: float = 0.0
    learned: bool = False


@dataclass(slots=True)
class RoutingStats:
    """Counters for readyz, tests and the benchmark."""

    decisions: int = 0
    embed_missing: int = 0  # decisions made without an embedding (busy, slow, failed, loading)
    feedback: int = 0  # feedback rows received
    updates: int = 0  # policy updates from feedback
    implicit_updates: int = 0  # policy updates from the "unrated counts as ok" rule
    replay_updates: int = 0  # policy updates from evaluation replays (one per variant answer)
    unmatched: int = 0  # feedback about calls not remembered: other routes, evicted, or before a restart
    forwarded: int = 0  # of those, sent to the other replicas (one of them may remember the call)
    remote_updates: int = 0  # policy updates made by other replicas, applied here
    ignored: int = 0  # feedback that said nothing under the metric, repeated, or was refused
    rebuilt: dict[str, int] = field(default_factory=dict)  # route -> examples of the start-up rebuild


class LearnedRouting:
    """The router's state for the gateway's lifetime: a pipeline hook, a feedback sink, a Service."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        store: Callable[[], Store | None],
        *,
        embedders: EmbedderHolder | None = None,
        memory: int = 20_000,
        embed_timeout_s: float = 0.05,
        artifact_poll_s: float = 5.0,
        sweep_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._memory: OrderedDict[str, _Seen] = OrderedDict()
        self._memory_size = memory
        self._unrated: dict[str, deque[tuple[str, _Seen]]] = {}  # route -> (call id, seen), oldest first
        self._inbox: deque[FeedbackRecord] = deque(maxlen=memory)
        self._wake = asyncio.Event()
        self._embed_timeout_s = embed_timeout_s
        self._artifact_poll_s = artifact_poll_s
        self._sweep_s = sweep_s
        self._clock = clock
        self._embedders = embedders or EmbedderHolder(lambda: runtime().settings.learners.embedder)
        self._tasks: list[asyncio.Task[None]] = []
        self.versions = PolicyVersions(runtime)
        self.stats = RoutingStats()
        self.share: RoutingShare | None = None  # other replicas' updates, with [limits] redis_url
        self._from_share: set[str] = set()  # ids of queued feedback other replicas forwarded (not forwarded again)

    # -- request path -------------------------------------------------------------------------
    @staticmethod
    def handles(route: RouteRuntime) -> bool:
        """True for routes whose policy learns (and so needs Features remembered)."""
        return isinstance(route.policy, LearnedPolicy)

    async def decide(self, route: RouteRuntime, base: Features, body: Body, call_id: str,
                     sticky_user: str | None = None) -> Decision:
        """Embed the last user message (when the policy uses it), choose, remember the Features.
        `sticky_user` (the stored pseudonym of the user) keys a running canary; default: `base.user`."""
        policy = route.policy
        assert isinstance(policy, LearnedPolicy)
        f = base
        if policy.dims:
            f = replace(base, embedding=await self._embed(query_text(body.get("messages"))))
        chooser, version = self.versions.arm(route.name, policy, f, sticky_user)
        decision = chooser.choose(f)
        if version is not None:
            decision = replace(decision, version=version)
        self.stats.decisions += 1
        self._memory[call_id] = _Seen(route.name, f)
        if len(self._memory) > self._memory_size:
            self._memory.popitem(last=False)
        return decision

    def finished(self, record: CallRecord) -> None:
        """The pipeline's end-of-call hook: note the variant that answered and what it cost."""
        seen = self._memory.get(record.id)
        if seen is None or record.status != 200:
            return
        seen.variant, seen.cost, seen.ended = record.variant, record.cost_usd, self._clock()
        seen.escalation = record.escalation
        queue = self._unrated.setdefault(seen.route, deque(maxlen=self._memory_size))
        queue.append((record.id, seen))

    async def _embed(self, text: str) -> Any:
        embed = self._embedders.current_fn()
        if embed is None:
            self.stats.embed_missing += 1
            return None
        try:
            return await asyncio.wait_for(embed(text), self._embed_timeout_s)
        except (EmbedderBusy, TimeoutError, RuntimeError) as exc:
            log.debug("routing without an embedding: %s", exc)
            self.stats.embed_missing += 1
            return None

    async def embed_many(self, texts: list[str]) -> Sequence[Any]:
        """Embeddings of many texts through the request path's embedder (for rebuilds), off the loop."""
        return await threaded(await self._embedders.get())(texts)

    # -- online learning ------------------------------------------------------------------------
    def feedback(self, fb: FeedbackRecord) -> None:
        """Capture's hook for every feedback row (explicit or inferred); never blocks."""
        self.stats.feedback += 1
        self._inbox.append(fb)
        self._wake.set()

    def _live(self, route: str) -> LearnedPolicy | None:
        rr = self._runtime().routes.get(route)
        return rr.policy if rr is not None and isinstance(rr.policy, LearnedPolicy) else None

    def _update(self, u: Update, *, share: bool) -> bool:
        """Apply one update to the route's live policy (and its running canary); with `share`, send it
        to the other replicas too. False when the policy does not know the variant or is frozen."""
        policy = self._live(u.route)
        if policy is None or u.variant not in policy.variants:
            return False
        if not policy.update(u.features, u.variant, u.quality, u.cost):
            return False  # frozen
        canary = self.versions.canaries.get(u.route)
        if canary is not None and u.variant in canary.policy.variants:
            canary.policy.update(u.features, u.variant, u.quality, u.cost)
        if share and self.share is not None:
            self.share.publish(u)
        return True

    def _learn(self, seen: _Seen, quality: float) -> bool:
        policy = self._live(seen.route)
        if policy is None or seen.variant not in policy.variants:
            return False
        assert seen.variant is not None
        for variant, q, cost in call_outcomes(seen.variant, seen.cost, seen.escalation, quality):
            if q is None or variant not in policy.variants:
                continue
            if not self._update(Update(seen.route, variant, q, cost, seen.features), share=True):
                return False  # frozen
        seen.learned = True
        return True

    def _remote_update(self, u: Update) -> None:
        """An update another replica made (routing_share.py): applied here, not sent on."""
        if self._update(u, share=False):
            self.stats.remote_updates += 1

    def _remote_feedback(self, fb: FeedbackRecord) -> None:
        """Feedback another replica received about a call it does not remember: ours if we do."""
        if fb.call_id in self._memory:
            if len(self._from_share) > self._memory_size:  # rows the bounded inbox dropped leave ids behind
                self._from_share.clear()
            self._from_share.add(fb.id)
            self._inbox.append(fb)
            self._wake.set()

    def apply_feedback(self, limit: int = 256) -> int:
        """Apply up to `limit` queued feedback rows now; returns how many were taken."""
        n = 0
        while self._inbox and n < limit:
            fb = self._inbox.popleft()
            n += 1
            seen = self._memory.get(fb.call_id)
            forwarded = bool(self._from_share) and fb.id in self._from_share
            if forwarded:
                self._from_share.discard(fb.id)
            if seen is None or seen.variant is None:
                self.stats.unmatched += 1
                if seen is None and self.share is not None and not forwarded and self._learned_routes():
                    self.share.forward(fb)  # another replica may have served it
                    self.stats.forwarded += 1
                continue
            policy = self._live(seen.route)
            q = feedback_quality(fb, policy.quality_metric) if policy is not None else None
            if q is None or seen.learned or not self._learn(seen, q):
                self.stats.ignored += 1
                continue
            self.stats.updates += 1
        return n

    def sweep(self) -> int:
        """Count calls past their route's feedback window without usable feedback as ok (routes
        with `unrated = "ok"`); forget the rest. Returns the implicit updates made."""
        now = self._clock()
        made = 0
        for route, queue in self._unrated.items():
            rr = self._runtime().routes.get(route)
            cfg = online_learning(rr.settings.policy.params()) if rr and rr.settings else OnlineLearning()
            horizon = now - cfg.unrated_after_s
            while queue and (cfg.unrated == "ignore" or queue[0][1].ended <= horizon):
                _, seen = queue.popleft()
                if cfg.unrated == "ok" and not seen.learned and self._learn(seen, 1.0):
                    made += 1
        self.stats.implicit_updates += made
        return made

    # -- service --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the embedder when a route needs it, then apply feedback and follow artifacts in the background."""
        if any(self.handles(r) for r in self._runtime().routes.values()):
            await self._embedders.get()
        limits = self._runtime().settings.limits
        # read at start (a new redis_url, or a first learned route, takes a restart, like the limiter's)
        if limits.redis_url and self._learned_routes():
            self.share = RoutingShare(limits.redis_url, prefix=limits.prefix)
            self.share.on_update, self.share.on_feedback = self._remote_update, self._remote_feedback
            await self.share.start()
        self._tasks.append(asyncio.create_task(self._run(), name="flywheel-routing"))

    async def stop(self) -> None:
        """Stop the loop, apply what is queued, close the embedder."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        while self.apply_feedback():
            pass
        if self.share is not None:
            await self.share.stop()
            self.share = None

    async def _run(self) -> None:
        next_poll = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sweep_s)
            self._wake.clear()
            while self.apply_feedback():
                await asyncio.sleep(0)  # let requests in between batches
            self.sweep()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self._artifact_poll_s
                try:
                    await self.sync_artifacts()
                except Exception:
                    log.exception("reading policy artifacts failed; will retry")

    def _learned_routes(self) -> list[str]:
        return [n for n, r in self._runtime().routes.items() if self.handles(r) and r.settings is not None]

    # -- the learning half's interface (learners/routing_cycle.py) ----------------------------
    def learned_routes(self) -> list[str]:
        """Routes whose policy learns."""
        return self._learned_routes()

    def live_policy(self, route: str) -> LearnedPolicy | None:
        """The live learned policy of `route` (None when its policy does not learn)."""
        return self._live(route)

    def live_version(self, route: str) -> str | None:
        """The policy artifact version whose learned state is live on `route` (None: none loaded)."""
        return self.versions.live.get(route)

    def hold_version(self, route: str, version: str | None) -> None:
        """Mark `version` as live without loading it: a rebuild from the store supersedes its state."""
        self.versions.live[route] = version

    def adopt(self, route: str, fitted: LearnedPolicy | None, examples: int) -> None:
        """Carry a policy rebuilt from `examples` stored calls into the live policy (a reload may
        have replaced it since the rebuild began: the current one takes the state)."""
        target = self._live(route)
        if fitted is not None and target is not None:
            carry_state(fitted, target)
        self.stats.rebuilt[route] = examples

    async def sync_artifacts(self) -> None:
        """Follow the policy artifacts' states (gateway/serve/policy_versions.py)."""
        store = self._store()
        if store is not None:
            routes = [(name, p) for name in self._learned_routes() if (p := self._live(name)) is not None]
            await self.versions.sync(store, routes)

    def observe_replays(self, route: str, replays: Sequence[Replay]) -> int:
        """Learn from evaluation replays (learners/routing_replay.py) as from feedback: each
        variant's scored answer updates the live policy (and a running canary). Returns the updates."""
        if self._live(route) is None:
            return 0
        made = 0
        for r in replays:
            for variant, o in r.outcomes.items():
                made += self._update(Update(route, variant, o.quality, o.cost, r.features), share=True)
        self.stats.replay_updates += made
        return made

    def canary_shares(self) -> dict[str, float]:
        """The traffic share of each learned route's policy canary (0 where none runs), for /metrics."""
        default = self._runtime().settings.learners.canary_share
        out = {}
        for route in self._learned_routes():
            canary = self.versions.canaries.get(route)
            out[route] = 0.0 if canary is None else default if canary.share is None else canary.share
        return out

    def known(self, call_ids: Sequence[str]) -> int:
        """How many of `call_ids` are remembered (for tests and the benchmark)."""
        return sum(c in self._memory for c in call_ids)
