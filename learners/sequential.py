"""The canary's sequential decision: Beta posteriors on canary vs current quality, checked every time.

A fixed sample size makes a far better candidate wait as long as a doubtful one, and lets a worse
one hurt its share of users just as long. Instead, each check compares posteriors:

- current ~ Beta(1 + Σq, 1 + n − Σq) over the calls with feedback served by the rest of the route
  (quality q in [0, 1] counts as a fractional success);
- canary ~ the same, plus a weak prior: `prior_weight` pseudo-calls at current's posterior mean
  shifted by the offline evaluation's delta (the offline figures are on another scale than
  online feedback; their difference carries over, their level does not).

From 20,000 seeded draws: p_better = P(canary > current), p_worse = P(canary < current − tolerance).
With at least `min_feedback` canary calls rated, p_worse ≥ confidence rolls back and
1 − p_worse ≥ confidence promotes; at `max_feedback` (the evidence bound) the posterior means
decide. Meanwhile the canary's share of traffic grows with the evidence that it is better:
share = floor + (cap − floor) · max(0, 2·p_better − 1), floor `canary_share`, cap
`canary_max_share`. Without evidence (p_better ½) it stays at the floor; as p_better nears 1 it
nears the cap; as the canary looks worse (on at least `min_feedback` rated calls, P(worse by more
than the tolerance) from ½ up to `confidence`) it falls back to `canary_share`, where it still gathers
the evidence that rolls it back.

The floor may be raised for one canary (`floor`): `exposure_share` bounds what a canary can cost.
Quality per call lies in [0, 1], so a canary serving share s can lose at most s · q per call
against a current of quality q: when current fails most calls (q small) a wide canary risks
little and gathers its evidence in a few dozen calls instead of hundreds. An index that only adds
examples to current opens at the cap (learners/rollout.py): it changes only the calls that retrieve
its new examples, and rolling a bad one back takes about as many bad rated canary calls at any
share, so a wide canary serves no more bad answers before it is decided, only sooner; a narrow one
would leave most users on an index that lags the corrections by its whole decision.
numpy only: pure, no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gateway.config.settings import LearnerSettings

Verdict = Literal["promote", "roll_back", "continue"]
_DRAWS = 20_000
_STRATUM_PRIOR = 2.0  # pseudo-calls at current's overall mean that steady a thinly rated stratum


@dataclass(frozen=True, slots=True)
class ArmEvidence:
    """Calls with feedback on one arm and their summed quality."""

    n: int
    total: float


@dataclass(frozen=True, slots=True)
class Rule:
    """The settings of the decision (from `[learners]`)."""

    base_share: float
    max_share: float
    confidence: float
    min_feedback: int
    max_feedback: int
    tolerance: float
    prior_weight: float
    grow_confidence: float = 0.8  # promotes an index that only adds examples to current

    @classmethod
    def of(cls, cfg: LearnerSettings) -> Rule:
        """The rule configured in `[learners]`."""
        return cls(cfg.canary_share, max(cfg.canary_share, cfg.canary_max_share), cfg.canary_confidence,
                   cfg.canary_min_feedback, max(cfg.canary_min_feedback, cfg.canary_max_feedback),
                   cfg.canary_tolerance, cfg.canary_prior_weight, cfg.canary_grow_confidence)


@dataclass(frozen=True, slots=True)
class SequentialVerdict:
    """What to do with the canary now, the share it should serve meanwhile, and why."""

    verdict: Verdict
    share: float
    p_better: float
    p_worse: float
    canary_mean: float  # posterior means
    current_mean: float
    why: str


def at_canary_mix(canary: Sequence[tuple[str, float]], current: Sequence[tuple[str, float]]) -> float | None:
    """Current's mean quality had it served the canary's mix of strata: (stratum, quality) of each
    rated call, the stratum being the variant that answered. None when all calls share one stratum.

    On a route with several models an artifact's canary and current do not answer with the same
    mix: a learned router sends calls that retrieve close examples to the cheaper model, so an index
    canary serves more of them than current, and raw means compare models, not artifacts. Weighing
    current's per-model means by the canary's mix compares like with like (each stratum's mean
    shrunk toward current's overall mean by `_STRATUM_PRIOR` calls). A policy chooses the mix
    itself: its canary is compared on raw means."""
    if not canary or not current or len({s for s, _ in (*canary, *current)}) < 2:
        return None
    overall = sum(q for _, q in current) / len(current)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for stratum, q in current:
        sums[stratum][0] += q
        sums[stratum][1] += 1
    mix: dict[str, int] = defaultdict(int)
    for stratum, _ in canary:
        mix[stratum] += 1
    return sum(w / len(canary) * (sums[s][0] + _STRATUM_PRIOR * overall) / (sums[s][1] + _STRATUM_PRIOR)
               for s, w in mix.items())


def exposure_share(rule: Rule, current: ArmEvidence, *, bound: float = 0.9, seed: int = 0) -> float:
    """The canary share whose worst-case loss stays small given current's online quality.

    A canary at share s loses at most s · q per call against a current of quality q. With current
    ~ Beta(1 + Σq, 1 + n − Σq) and q̂ its `bound` quantile (q is below q̂ with that probability),
    the share is the cap scaled by 1 − q̂: a current that fails nearly every rated call opens the
    canary near the cap, one that mostly succeeds (or is barely known: q̂ near 1) keeps it at
    `canary_share`.
    """
    if rule.max_share <= rule.base_share:
        return rule.base_share
    draws = np.random.default_rng(seed).beta(1.0 + current.total, 1.0 + current.n - current.total, _DRAWS)
    high = float(np.quantile(draws, bound))
    return round(max(rule.base_share, rule.max_share * (1.0 - high)), 2)


def decide(canary: ArmEvidence, current: ArmEvidence, rule: Rule, prior_delta: float | None = None,
           *, seed: int = 0, floor: float | None = None, grows: bool = False) -> SequentialVerdict:
    """One check of a running canary (see the module docstring); `floor`: this canary's lowest
    share while it does not look worse (`exposure_share` at its opening; default `canary_share`);
    `grows`: the canary only adds to what current holds (an index with all of current's examples
    and more), so `grow_confidence` that it is not worse promotes it: it cannot lose what current
    knows, and a tie otherwise runs to the evidence bound while newer corrections wait."""
    a_cur, b_cur = 1.0 + current.total, 1.0 + current.n - current.total
    cur_mean = a_cur / (a_cur + b_cur)
    a_can, b_can = 1.0 + canary.total, 1.0 + canary.n - canary.total
    if prior_delta is not None and rule.prior_weight > 0:
        m = min(0.98, max(0.02, cur_mean + prior_delta))
        a_can, b_can = a_can + rule.prior_weight * m, b_can + rule.prior_weight * (1 - m)
    can_mean = a_can / (a_can + b_can)
    rng = np.random.default_rng(seed)
    x, y = rng.beta(a_can, b_can, _DRAWS), rng.beta(a_cur, b_cur, _DRAWS)
    p_better = float(np.mean(x > y))
    p_worse = float(np.mean(x < y - rule.tolerance))
    # The floor gives way as the canary looks worse: from the point where it is more likely than
    # not worse by more than the tolerance down to `canary_share` where it would be rolled back.
    # Gradually: at a tie p_worse hovers around ½ with every rated call, and a floor lost and won
    # back on such coin flips starves the canary of the evidence that decides it. Before
    # `min_feedback` rated calls it holds: a bad canary is rolled back after about as many bad
    # rated calls at any share (the floor's premise).
    top = rule.base_share if floor is None else min(rule.max_share, max(rule.base_share, floor))
    worse = min(1.0, max(0.0, (p_worse - 0.5) / max(rule.confidence - 0.5, 1e-9)))
    low = top - (top - rule.base_share) * (worse if canary.n >= rule.min_feedback else 0.0)
    share = round(low + (rule.max_share - low) * max(0.0, 2 * p_better - 1), 2)
    figures = (f"P(canary better) {p_better:.2f}, P(worse by > {rule.tolerance:.2f}) {p_worse:.2f}; "
               f"posterior means {can_mean:.2f} vs {cur_mean:.2f}")
    verdict: Verdict
    if canary.n < rule.min_feedback:
        verdict, why = "continue", f"{figures}; waiting for {rule.min_feedback} canary calls with feedback"
    elif p_worse >= rule.confidence:
        verdict, why = "roll_back", f"{figures}; worse with confidence {rule.confidence:.2f}"
    elif 1 - p_worse >= (bar := rule.grow_confidence if grows else rule.confidence):
        grown = " (it only adds examples to current)" if grows else ""
        verdict, why = "promote", f"{figures}; not worse, confidence {bar:.2f} (within tolerance){grown}"
    elif canary.n >= rule.max_feedback:
        ok = can_mean >= cur_mean - rule.tolerance
        verdict = "promote" if ok else "roll_back"
        why = (f"{figures}; evidence bound {rule.max_feedback} reached: "
               + ("within tolerance" if ok else "worse by more than tolerance"))
    else:
        verdict, why = "continue", f"{figures}; undecided"
    return SequentialVerdict(verdict, share, p_better, p_worse, can_mean, cur_mean, why)
