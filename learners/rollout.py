"""Rollout: the only step that changes what live traffic is served with.

A candidate that passed evaluation becomes the canary (served to `canary_share` of callers,
sticky per user); with `canary_share = 0` it is promoted at once. While it runs, feedback on calls
served by the canary is compared with feedback on calls served by the current version, each
call's quality read by `learners/quality.call_quality(…, "any")` (ratings, scores, corrections,
inferred signals; the newest row that says something wins). Once `canary_min_feedback` canary calls have
feedback, the canary is promoted if its mean is within `canary_tolerance` of current (or better),
and rolled back otherwise. Without any feedback on current to compare with, a canary needs a mean
of at least 0.5. `rollback` undoes a canary or a promoted version at once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from gateway.capture.quality import call_quality
from gateway.config.settings import LearnerSettings
from gateway.store.artifacts import ArtifactRegistry, KindStates, TransitionRefused, kind_of
from gateway.store.records import ArtifactKind, CallRecord, FeedbackRecord

Action = Literal["canary", "promoted", "rolled_back", "rejected", "waiting"]
# the kinds this module decides; policies have their own canary check (learners/routing_rollout.py)
AUGMENTING_KINDS: tuple[ArtifactKind, ...] = ("template", "index")
_PAGE = 1000
_MAX_CALLS = 50_000


@dataclass(frozen=True, slots=True)
class OnlineFigures:
    """Feedback on calls served by the canary vs by the current version, since the canary began."""

    canary: str
    current: str | None
    canary_n: int
    canary_mean: float
    current_n: int
    current_mean: float
    since: float


@dataclass(frozen=True, slots=True)
class RolloutDecision:
    route: str
    kind: ArtifactKind
    version: str
    action: Action
    reason: str
    online: OnlineFigures | None = None


def _served(call: CallRecord, kind: ArtifactKind) -> str | None:
    return call.template_version if kind == "template" else call.index_version


class Rollout:
    """Moves artifacts between candidate, canary, promoted and rolled back, with reasons."""

    def __init__(self, registry: ArtifactRegistry, settings: Callable[[], LearnerSettings]) -> None:
        self.registry = registry
        self._settings = settings

    async def begin(self, route: str, kind: ArtifactKind, version: str, why: str) -> RolloutDecision:
        """Start a candidate that passed evaluation: canary, or promoted when the canary is off."""
        share = self._settings().canary_share
        if share > 0:
            reason = f"canary at {share:.0%}: {why}"
            await self.registry.move(route, kind, version, "canary", reason)
            return RolloutDecision(route, kind, version, "canary", reason)
        reason = f"promoted without canary (canary_share = 0): {why}"
        await self.registry.move(route, kind, version, "promoted", reason)
        return RolloutDecision(route, kind, version, "promoted", reason)

    async def reject(self, route: str, kind: ArtifactKind, version: str, why: str) -> RolloutDecision:
        await self.registry.move(route, kind, version, "rejected", why)
        return RolloutDecision(route, kind, version, "rejected", why)

    async def compare(self, route: str, kind: ArtifactKind, states: KindStates) -> OnlineFigures | None:
        """Online figures for the kind's canary, or None when there is no canary."""
        canary = states.canary
        if canary is None:
            return None
        current = states.current
        since = states.versions[canary].since
        store = self.registry.store
        calls: list[CallRecord] = []
        while len(calls) < _MAX_CALLS:
            page = await store.list_calls(route=route, since=since, limit=_PAGE, offset=len(calls))
            calls += page
            if len(page) < _PAGE:
                break
        served = {c.id: _served(c, kind) for c in calls if c.endpoint == "chat"}
        per_call: dict[str, list[FeedbackRecord]] = defaultdict(list)
        for fb in await store.list_feedback(route=route, since=since):
            if fb.call_id in served:
                per_call[fb.call_id].append(fb)
        groups: dict[str | None, list[float]] = defaultdict(list)
        for call_id, fbs in per_call.items():
            quality = call_quality(fbs, "any")
            if quality is not None:
                groups[served[call_id]].append(quality)
        can, cur = groups.get(canary, []), groups.get(current, [])
        return OnlineFigures(canary, current, len(can), sum(can) / len(can) if can else 0.0,
                             len(cur), sum(cur) / len(cur) if cur else 0.0, since)

    async def check(self, route: str) -> list[RolloutDecision]:
        """Decide every running canary of `route` that has enough feedback."""
        cfg = self._settings()
        out: list[RolloutDecision] = []
        states = await self.registry.all_states(route)
        for kind in AUGMENTING_KINDS:
            ks = states.get(kind)
            fig = await self.compare(route, kind, ks) if ks is not None else None
            if fig is None:
                continue
            counts = f"{fig.canary_n} vs {fig.current_n} calls with feedback"
            figures = (f"online: canary {fig.canary} {fig.canary_mean:.2f} vs current {fig.current or 'none'} "
                       f"{fig.current_mean:.2f} ({counts})")
            if fig.canary_n < cfg.canary_min_feedback:
                out.append(RolloutDecision(route, kind, fig.canary, "waiting",
                                           f"{figures}; waiting for {cfg.canary_min_feedback}", fig))
                continue
            baseline = fig.current_mean if fig.current_n else 0.5 + cfg.canary_tolerance
            action: Literal["promoted", "rolled_back"]
            if fig.canary_mean >= baseline - cfg.canary_tolerance:
                action, reason = "promoted", f"{figures}; within tolerance {cfg.canary_tolerance:.2f}"
            else:
                action, reason = "rolled_back", f"{figures}; worse by more than {cfg.canary_tolerance:.2f}"
            try:
                await self.registry.move(route, kind, fig.canary, action, reason)
            except TransitionRefused:  # another replica decided first
                continue
            await self.registry.annotate(route, kind, fig.canary, online=asdict(fig), decided_at=time.time())
            out.append(RolloutDecision(route, kind, fig.canary, action, reason, fig))
        return out

    async def rollback(self, route: str, version: str | None = None,
                       reason: str = "rolled back by admin") -> RolloutDecision:
        """Undo a version at once: `version`, else the running canary, else the latest promotion.

        Rolling back a promoted version makes the one promoted before it current again.
        """
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
        return RolloutDecision(route, kind, version, "rolled_back", reason)
