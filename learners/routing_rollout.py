"""The online half of a policy artifact's rollout: canary vs current on live feedback and cost.

learners/rollout.py decides template and index canaries by the version each call logged
(`template_version`, `index_version`); a routing policy's version is in `policy_version`, and a
cheaper policy is the point of the exercise, so its canary is judged here, with the same
lifecycle (`ArtifactRegistry.move`) and settings (`canary_min_feedback`, `canary_tolerance`):
promoted when its mean quality (the route's `quality_metric`, gateway/capture/quality.py) is within
`canary_tolerance` of the other calls' since the canary began, rolled back otherwise. The cost
per call of both arms is reported with the decision.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Literal

from gateway.capture.quality import call_quality
from gateway.config.settings import LearnerSettings
from gateway.store.artifacts import ArtifactRegistry, TransitionRefused
from gateway.store.records import CallRecord, FeedbackRecord
from learners.rollout import RolloutDecision

_PAGE = 1000
_MAX_CALLS = 50_000


@dataclass(frozen=True, slots=True)
class PolicyArms:
    """Canary arm vs the rest of the route's traffic since the canary began."""

    canary: str
    canary_calls: int
    canary_rated: int
    canary_quality: float
    canary_cost: float  # mean cost per call (USD)
    other_calls: int
    other_rated: int
    other_quality: float
    other_cost: float
    since: float


async def compare_policy_arms(registry: ArtifactRegistry, route: str, metric: str) -> PolicyArms | None:
    """Feedback and cost of calls served by the policy canary vs the others; None without a canary."""
    states = await registry.states(route, "policy")
    canary = states.canary
    if canary is None:
        return None
    since = states.versions[canary].since
    store = registry.store
    calls: list[CallRecord] = []
    while len(calls) < _MAX_CALLS:
        page = await store.list_calls(route=route, since=since, limit=_PAGE, offset=len(calls))
        calls += page
        if len(page) < _PAGE:
            break
    chat = {c.id: c for c in calls if c.endpoint == "chat"}
    by_call: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for fb in await store.list_feedback(route=route, since=since):
        if fb.call_id in chat:
            by_call[fb.call_id].append(fb)
    arms: dict[bool, list[CallRecord]] = {True: [], False: []}
    for c in chat.values():
        arms[c.policy_version == canary].append(c)

    def figures(cs: list[CallRecord]) -> tuple[int, int, float, float]:
        qs = [q for c in cs if (q := call_quality(by_call.get(c.id, ()), metric)) is not None]
        cost = sum(c.cost_usd or 0.0 for c in cs) / len(cs) if cs else 0.0
        return len(cs), len(qs), sum(qs) / len(qs) if qs else 0.0, cost

    can, oth = figures(arms[True]), figures(arms[False])
    return PolicyArms(canary, *can, *oth, since)


async def check_policy_canary(
    registry: ArtifactRegistry, route: str, metric: str, settings: LearnerSettings
) -> RolloutDecision | None:
    """Promote or roll back the route's policy canary once it has enough feedback."""
    arms = await compare_policy_arms(registry, route, metric)
    if arms is None:
        return None
    figures = (f"online: canary {arms.canary} quality {arms.canary_quality:.2f}, ${arms.canary_cost:.6f}/call "
               f"vs rest {arms.other_quality:.2f}, ${arms.other_cost:.6f}/call "
               f"({arms.canary_rated} vs {arms.other_rated} calls with feedback)")
    if arms.canary_rated < settings.canary_min_feedback:
        return RolloutDecision(route, "policy", arms.canary, "waiting",
                               f"{figures}; waiting for {settings.canary_min_feedback}")
    baseline = arms.other_quality if arms.other_rated else 0.5 + settings.canary_tolerance
    promote = arms.canary_quality >= baseline - settings.canary_tolerance
    to: Literal["promoted", "rolled_back"] = "promoted" if promote else "rolled_back"
    verdict = "within tolerance" if promote else "worse by more than"
    reason = f"{figures}; {verdict} {settings.canary_tolerance:.2f}"
    try:
        await registry.move(route, "policy", arms.canary, to, reason)
    except TransitionRefused:  # another replica decided first
        return None
    await registry.annotate(route, "policy", arms.canary, online=asdict(arms), decided_at=time.time())
    return RolloutDecision(route, "policy", arms.canary, to, reason)
