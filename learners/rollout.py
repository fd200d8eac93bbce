"""Rollout: the only step that changes what live traffic is served with, for every artifact kind.

Templates, example indices and routing policies share one mechanism. A candidate that passed
evaluation becomes the canary (served to a share of traffic, see `begin`: `canary_share`, or more
when the offline evaluation alone already makes the canary likely better); with `canary_share = 0`
it is promoted at once. While it runs, the calls served by the canary are compared with the other
calls of the route since the canary began (for an index that only adds examples to current, only
the canary calls that retrieved one of them: the others are served as current would serve them).
The arms differ only in which logged field says which version served a call (`SERVED_BY`:
`template_version`, `index_version`, `policy_version`) and in the quality metric
(`call_quality(…, "any")` for templates and indices, the route's `quality_metric` for policies);
the cost per call of both arms is reported too. `check` decides running canaries
(learners/sequential.py); `rollback` undoes a canary or a promoted version at once.

Learning never waits for a canary: a candidate that passes evaluation while a canary of its kind
runs is queued (it stays `candidate`, its evaluation says `queued`), unless it is an index that
holds all of the running index canary's examples and more: then it takes the canary's place, share
and evidence (`_supersede`: one rolling canary). When the canary is decided,
the newest queued candidate starts as the next canary and older queued ones are rejected as
superseded; after a rollback it starts only if it does not carry the examples the rolled-back
version introduced (else it is rejected, and the next cycle learns without them).

What a decision reads besides the feedback comparison (the offline prior, the opening share
current's failure rate allows, whether one index only adds to another, a rolling canary's
members, the examples a rollback blames) is `learners/canary_facts.py`.

`begin`, `check` and `rollback` run one at a time per route under the lock the learning loop
hands in (`lock`, shared by every `Rollout` of the loop): canary decisions run beside a learning
cycle (learners/loop.py), and `begin` reads the running canary under that lock, so a cycle and a
decision never start two canaries of one kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.capture.quality import call_quality
from gateway.config.settings import LearnerSettings
from gateway.store.artifacts import ArtifactRegistry, KindStates, TransitionRefused, kind_of, version_number
from gateway.store.records import ArtifactKind, CallRecord, FeedbackRecord
from learners.canary_facts import AUGMENTING_KINDS, SERVED_BY, CanaryFacts, blamed, calls_since, evaluation_of
from learners.sequential import ArmEvidence, Rule, SequentialVerdict, at_canary_mix, decide

Action = Literal["canary", "promoted", "rolled_back", "rejected", "waiting", "queued"]


@dataclass(frozen=True, slots=True)
class OnlineFigures:
    """Feedback and cost of calls served by the canary vs the route's other calls since the canary began."""

    canary: str
    current: str | None
    canary_n: int  # calls with feedback
    canary_mean: float  # mean quality of those
    current_n: int
    current_mean: float
    since: float
    canary_calls: int = 0  # calls served, rated or not
    current_calls: int = 0
    canary_cost: float = 0.0  # mean cost per call (USD)
    current_cost: float = 0.0
    canary_sum: float = 0.0  # summed quality: the posterior's fractional successes
    current_sum: float = 0.0
    current_raw_mean: float | None = None  # set when current_mean is at the canary's model mix (at_canary_mix)


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    route: str
    kind: ArtifactKind
    version: str
    action: Action
    reason: str
    online: OnlineFigures | None = None
    share: float | None = None  # a new share recorded for a canary that keeps running


class Rollout:
    """Moves artifacts between candidate, canary, promoted and rolled back, with reasons."""

    def __init__(self, registry: ArtifactRegistry, settings: Callable[[], LearnerSettings],
                 lock: Callable[[str], asyncio.Lock] | None = None) -> None:
        """`lock(route)`: the route's rollout lock (None: the caller serialises)."""
        self.registry = registry
        self._settings = settings
        self._lock = lock
        self.facts = CanaryFacts(registry, settings)

    def _guard(self, route: str) -> contextlib.AbstractAsyncContextManager[object]:
        return self._lock(route) if self._lock is not None else contextlib.nullcontext()

    async def begin(self, route: str, kind: ArtifactKind, version: str, why: str) -> RolloutDecision:
        """Start a candidate that passed evaluation: canary (queued behind a running one), or
        promoted when the canary is off."""
        async with self._guard(route):
            return await self._begin(route, kind, version, why)

    async def _begin(self, route: str, kind: ArtifactKind, version: str, why: str) -> RolloutDecision:
        share = self._settings().canary_share
        states = await self.registry.states(route, kind)
        running = states.canary if share > 0 else None
        if running is not None and running != version:
            grown = await self.facts.grown(route, kind, running, version)
            if grown is not None:
                return await self._supersede(route, kind, states, running, version, grown, why)
            if not await self._set_aside(route, kind, states, running, version):
                await self.registry.annotate(route, kind, version, queued={"behind": running, "why": why})
                return RolloutDecision(route, kind, version, "queued", f"queued behind canary {running}: {why}")
            states = await self.registry.states(route, kind)
        if share > 0:
            reason = f"canary at {share:.0%}: {why}"
            exposure, cur = await self.facts.exposure(route, kind)
            adds = await self.facts.grown(route, kind, states.current, version)
            if adds is not None:  # learners/sequential.py `exposure_share`: an index that only adds
                exposure = max(exposure, Rule.of(self._settings()).max_share)
            wide_open = exposure - share >= 0.05
            if wide_open:  # recorded before the canary starts: every replica's decisions read it
                await self.registry.annotate(route, kind, version, exposure={
                    "share": exposure, "current_n": cur.n, "current_total": round(cur.total, 4)})
            await self.registry.move(route, kind, version, "canary", reason)
            opening = await self._opening_share(route, kind, version)
            whys = []
            if opening is not None and opening - share >= 0.05:
                whys.append("the offline evaluation's evidence")  # strong: the deciding feedback comes sooner
            if wide_open and adds is not None:
                whys.append(f"it only adds {adds} examples to current {states.current}")
            elif wide_open:
                # current fails most calls: a wide canary risks little (learners/sequential.py)
                whys.append(f"current scores {(1 + cur.total) / (2 + cur.n):.2f} on its last {cur.n} rated calls")
            wide = max(opening or 0.0, exposure)
            if whys:
                reason = f"canary at {wide:.0%} ({'; '.join(whys)}): {why}"
                await self.registry.set_share(route, kind, version, wide, reason)
                return RolloutDecision(route, kind, version, "canary", reason, share=wide)
            return RolloutDecision(route, kind, version, "canary", reason)
        reason = f"promoted without canary (canary_share = 0): {why}"
        await self.registry.move(route, kind, version, "promoted", reason)
        return RolloutDecision(route, kind, version, "promoted", reason)

    async def _set_aside(self, route: str, kind: ArtifactKind, states: KindStates, running: str,
                         version: str) -> bool:
        """Reject the running canary in favour of `version` when `version` only adds examples to
        current, the canary does not (it retrieves another way, e.g. raced settings: corrections
        do not chain onto it, learners/growth.py) and it is not ahead: P(better) below
        `canary_grow_confidence`. Queued behind a tie, every correction would reach only the
        canary's share until the evidence bound, hundreds of calls at 10 %; the evaluation lane
        races the settings again, on more data."""
        adds = await self.facts.grown(route, kind, states.current, version)
        if adds is None or await self.facts.grown(route, kind, states.current, running) is not None:
            return False
        rule = Rule.of(self._settings())
        fig = await self.compare(route, kind, states)
        if fig is None:
            return False
        seq = await self._decide(route, kind, fig, rule)
        if seq.p_better >= rule.grow_confidence:
            return False
        try:
            await self.registry.move(route, kind, running, "rejected",
                                     f"set aside for {version}, which only adds {adds} examples to current "
                                     f"{states.current}: {describe(fig)}; P(canary better) {seq.p_better:.2f}, "
                                     "not ahead; the evaluation lane races its retrieval settings again")
        except TransitionRefused:  # decided meanwhile by another replica
            return False
        return True

    async def _supersede(self, route: str, kind: ArtifactKind, states: KindStates, running: str, version: str,
                         grown: int, why: str) -> RolloutDecision:
        """`version` grew from the running canary (its examples and more): it takes
        the canary's place and share, and the canary's calls count as its evidence (one rolling
        canary). Queued behind it, every newer correction would wait for the decision; replacing
        it without its evidence, a canary that keeps growing would never be decided."""
        old = await self.registry.get(route, kind, running)
        ev = evaluation_of(old)
        chain = ev.get("chain") or {"since": states.versions[running].since, "versions": []}
        fields: dict[str, Any] = {"chain": {"since": chain["since"], "versions": [*chain["versions"], running]}}
        if isinstance(ev.get("exposure"), dict):
            fields["exposure"] = ev["exposure"]
        share = states.versions[running].share or self._settings().canary_share
        if await self.facts.grown(route, kind, states.current, version) is not None:
            # it only adds to current: its floor is the cap, as in `_begin`; the share stays the
            # chain's until the next decision (lowered, it says the chain looks worse)
            fields["exposure"] = {"share": Rule.of(self._settings()).max_share, "adds_to": states.current}
        await self.registry.annotate(route, kind, version, **fields)  # before it serves: every replica reads it
        await self.registry.move(route, kind, running, "rejected", f"superseded by {version}, grown from it "
                                 f"(+{grown} examples); its calls count as {version}'s evidence")
        reason = f"canary at {share:.0%} in place of {running}, grown from it (+{grown} examples): {why}"
        await self.registry.move(route, kind, version, "canary", reason)
        await self.registry.set_share(route, kind, version, share, reason)
        return RolloutDecision(route, kind, version, "canary", reason, share=share)

    async def reject(self, route: str, kind: ArtifactKind, version: str, why: str) -> RolloutDecision:
        """Mark a candidate rejected, with the reason."""
        await self.registry.move(route, kind, version, "rejected", why)
        return RolloutDecision(route, kind, version, "rejected", why)

    async def compare(self, route: str, kind: ArtifactKind, states: KindStates,
                      metric: str = "any") -> OnlineFigures | None:
        """Online figures for the kind's canary, or None when there is no canary."""
        canary = states.canary
        if canary is None:
            return None
        members, since = await self.facts.members(route, kind, canary, states.versions[canary].since)
        served_by = SERVED_BY[kind]
        chat = {c.id: c for c in await calls_since(self.registry, route, since) if c.endpoint == "chat"}
        per_call: dict[str, list[FeedbackRecord]] = defaultdict(list)
        for fb in await self.registry.store.list_feedback(route=route, since=since):
            if fb.call_id in chat:
                per_call[fb.call_id].append(fb)
        # A canary that only adds examples to current serves a call as current would unless it
        # retrieved one of them: only those calls are its evidence. Counted, the rest (most calls,
        # at the cap) would promote a poisoned batch on calls that never saw it.
        adds = await self.facts.added(route, kind, states.current, canary)
        calls: dict[bool, list[CallRecord]] = {True: [], False: []}
        for c in chat.values():
            mine = served_by(c) in members
            if not (mine and adds is not None and adds.isdisjoint(c.retrieved_ids)):
                calls[mine].append(c)

        def arm(cs: list[CallRecord]) -> tuple[list[tuple[str, float]], int, float]:
            qs = [(c.variant, q) for c in cs if (q := call_quality(per_call.get(c.id, ()), metric)) is not None]
            return qs, len(cs), sum(c.cost_usd or 0.0 for c in cs) / len(cs) if cs else 0.0

        (cq, cc, ccost), (oq, oc, ocost) = arm(calls[True]), arm(calls[False])
        csum, osum = sum(q for _, q in cq), sum(q for _, q in oq)
        raw = osum / len(oq) if oq else 0.0
        mixed = at_canary_mix(cq, oq) if kind != "policy" else None
        return OnlineFigures(canary, states.current, len(cq), csum / len(cq) if cq else 0.0, len(oq),
                             raw if mixed is None else mixed, since, cc, oc, ccost, ocost, csum,
                             osum if mixed is None else mixed * len(oq), None if mixed is None else raw)

    async def check(self, route: str, kinds: Sequence[ArtifactKind] = AUGMENTING_KINDS,
                    metric: str = "any") -> list[RolloutDecision]:
        """Check every running canary of `route` among `kinds` (learners/sequential.py): promote or
        roll it back when the evidence says so, else record the share it should serve meanwhile."""
        async with self._guard(route):
            return await self._check(route, kinds, metric)

    async def _check(self, route: str, kinds: Sequence[ArtifactKind], metric: str) -> list[RolloutDecision]:
        rule = Rule.of(self._settings())
        out: list[RolloutDecision] = []
        states = await self.registry.all_states(route)
        for kind in kinds:
            ks = states.get(kind)
            fig = await self.compare(route, kind, ks, metric) if ks is not None else None
            if fig is None or ks is None:
                continue
            seq = await self._decide(route, kind, fig, rule)
            reason = f"{describe(fig)}; {seq.why}"
            if seq.verdict == "continue":
                recorded = ks.versions[fig.canary].share
                reason = f"share {seq.share:.0%}: {reason}"
                new_share = None
                if abs(seq.share - (rule.base_share if recorded is None else recorded)) >= 0.05:
                    try:
                        await self.registry.set_share(route, kind, fig.canary, seq.share, reason)
                    except TransitionRefused:  # decided meanwhile by another replica
                        continue
                    new_share = seq.share
                out.append(RolloutDecision(route, kind, fig.canary, "waiting", reason, fig, new_share))
                continue
            action: Literal["promoted", "rolled_back"] = "promoted" if seq.verdict == "promote" else "rolled_back"
            implicated = (await self.facts.implicated(route, kind, fig.canary, fig.since)
                          if action == "rolled_back" else None)
            if implicated is not None:  # written first: whoever reads the rolled-back state reads its blame
                await self.registry.annotate(route, kind, fig.canary, implicated=implicated)
            try:
                await self.registry.move(route, kind, fig.canary, action, reason)
            except TransitionRefused:  # another replica decided first
                continue
            await self.registry.annotate(route, kind, fig.canary, online=asdict(fig), sequential=_figures(seq),
                                         decided_at=time.time())
            out.append(RolloutDecision(route, kind, fig.canary, action, reason, fig))
            out += await self._dequeue(route, kind, fig.canary, action)
        return out

    async def _decide(self, route: str, kind: ArtifactKind, fig: OnlineFigures, rule: Rule) -> SequentialVerdict:
        """The sequential rule on a running canary's online figures and the facts it weighs."""
        return decide(ArmEvidence(fig.canary_n, fig.canary_sum), ArmEvidence(fig.current_n, fig.current_sum),
                      rule, await self.facts.prior(route, kind, fig.canary),
                      floor=await self.facts.floor(route, kind, fig.canary),
                      grows=await self.facts.grown(route, kind, fig.current, fig.canary) is not None)

    async def _dequeue(self, route: str, kind: ArtifactKind, decided: str,
                       action: Literal["promoted", "rolled_back"]) -> list[RolloutDecision]:
        """After `decided` left canary: start the newest queued candidate, reject the older ones."""
        ks = await self.registry.states(route, kind)
        queued = sorted((v.version for v in ks.versions.values() if v.state == "candidate"), key=version_number)
        if not queued or ks.canary is not None:
            return []
        out = [await self.reject(route, kind, v, f"superseded by {queued[-1]} (queued behind {decided})")
               for v in queued[:-1]]
        newest = await self.registry.get(route, kind, queued[-1])
        ev = evaluation_of(newest)
        why = str((ev.get("queued") or {}).get("why", "offline evaluation passed"))
        if action == "rolled_back":
            old = await self.registry.get(route, kind, decided)
            old_ev = evaluation_of(old)
            shared = set(ev.get("added") or ()) & set(blamed(old_ev))
            if shared:
                out.append(await self.reject(route, kind, queued[-1], f"carries {len(shared)} examples of "
                                             f"{decided}, rolled back; the next cycle learns without them"))
                return out
        out.append(await self._begin(route, kind, queued[-1], f"{why} (was queued behind {decided}, {action})"))
        return out

    async def _opening_share(self, route: str, kind: ArtifactKind, version: str) -> float | None:
        """The share the sequential rule gives a new canary on its offline evidence alone: current
        as replayed (n held-out calls at its offline mean), the canary as the prior shifted by the
        offline delta. A tie stays at `canary_share`; a large gain on enough cases opens wider."""
        rec = await self.registry.get(route, kind, version)
        ev = evaluation_of(rec)
        offline = ev.get("offline") or {}
        n, current, delta = offline.get("n"), offline.get("current"), offline.get("delta")
        if kind == "policy" or not (isinstance(n, int) and n > 0 and isinstance(current, int | float)
                                    and isinstance(delta, int | float)):
            return None
        return decide(ArmEvidence(0, 0.0), ArmEvidence(n, n * current), Rule.of(self._settings()), delta).share

    async def rollback(self, route: str, version: str | None = None,
                       reason: str = "rolled back by admin") -> RolloutDecision:
        """Undo a version at once: `version`, else the running canary, else the latest promotion
        (of a template or an index; a policy is rolled back by naming its version).

        Rolling back a promoted version makes the one promoted before it current again.
        """
        async with self._guard(route):
            return await self._rollback(route, version, reason)

    async def _rollback(self, route: str, version: str | None, reason: str) -> RolloutDecision:
        states = await self.registry.all_states(route)
        if version is None:
            live = [(ks.versions[v].since, kind, v) for kind, ks in states.items() if kind in AUGMENTING_KINDS
                    for v in [ks.canary] if v is not None]
            if not live:
                live = [(ks.versions[v].promoted_at or 0.0, kind, v) for kind, ks in states.items()
                        if kind in AUGMENTING_KINDS for v in [ks.current] if v is not None]
            if not live:
                raise TransitionRefused(f"route {route} has nothing to roll back")
            _, kind, version = max(live)
        else:
            kind = kind_of(version)
        ks = states.get(kind, KindStates())
        vs = ks.versions.get(version)
        if vs is None or vs.state not in ("canary", "promoted"):
            state = vs.state if vs else "unknown"
            raise TransitionRefused(f"{version} is {state}; only a canary or a promoted version can be rolled back")
        if vs.state == "promoted" and version != ks.current:
            reason += f" (was not current; current is {ks.current})"
        await self.registry.move(route, kind, version, "rolled_back", reason)
        if vs.state == "canary":
            await self._dequeue(route, kind, version, "rolled_back")
        return RolloutDecision(route, kind, version, "rolled_back", reason)


def _figures(seq: SequentialVerdict) -> dict[str, float]:
    return {"p_better": round(seq.p_better, 4), "p_worse": round(seq.p_worse, 4),
            "canary_mean": round(seq.canary_mean, 4), "current_mean": round(seq.current_mean, 4),
            "share": seq.share}


def describe(fig: OnlineFigures) -> str:
    """The figures of an online comparison, for a decision's reason."""
    mixed = "" if fig.current_raw_mean is None else f" at the canary's model mix ({fig.current_raw_mean:.2f} as served)"
    return (f"online: canary {fig.canary} {fig.canary_mean:.2f} vs current {fig.current or 'none'} "
            f"{fig.current_mean:.2f}{mixed} ({fig.canary_n} vs {fig.current_n} calls with feedback; "
            f"${fig.canary_cost:.6f} vs ${fig.current_cost:.6f} per call)")
