"""What a routed call taught: the (variant, quality, cost) outcomes of a call, and evaluation replays.

Shared by the router's online updates (gateway/serve/routing.py) and the policy learner
(learners/routing_data.py), so both credit an escalated call the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.store.records import Escalation
from policies.base import Features


@dataclass(frozen=True, slots=True)
class Outcome:
    quality: float
    cost: float


@dataclass(frozen=True, slots=True)
class Replay:
    """An evaluation replay: the same request served by several variants, each judged."""

    features: Features
    outcomes: Mapping[str, Outcome]


def escalated_quality(served_quality: float, same_answer: bool) -> float | None:
    """What the served answer's quality says about the escalated, unused one (`Escalation`): the
    same answer scores the same; a different one was wrong if the served one was right (a label or
    extraction route, which escalation is for, has one right answer); otherwise nothing is known."""
    if same_answer:
        return served_quality
    return 0.0 if served_quality >= 1.0 else None


def call_outcomes(
    variant: str, cost_usd: float | None, esc: Escalation | None, quality: float | None
) -> list[tuple[str, float | None, float]]:
    """(variant, quality, cost) for each answer a call (served by `variant`, costing `cost_usd` in
    all) paid for, the served one first: an escalated call also teaches the router what its decided
    variant would have scored."""
    total = cost_usd or 0.0
    if esc is None:
        return [(variant, quality, total)]
    spent = esc.cost_usd or 0.0
    unused = None if quality is None else escalated_quality(quality, esc.same_answer)
    return [(variant, quality, max(total - spent, 0.0)), (esc.variant, unused, spent)]
