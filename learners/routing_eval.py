"""Off-policy evaluation of a routing policy on logged calls, and on evaluation replays.

Logged calls: each call was routed by the policy of its time with a logged probability p of the
variant that answered. A policy π is scored by importance weighting, w = π(variant | request) / p,
self-normalised (SNIPS): quality = Σ w·q / Σ w over calls with feedback, cost = Σ w·c / Σ w over
every call. Unbiased up to the normalisation as long as every variant π may choose had p > 0 at
logging time, which the learned policy's exploration guarantees. `effective_n` (Kish: (Σw)²/Σw²)
says how many calls the estimate is worth: few when π disagrees with the logging policy and
only exploration calls speak for it.

Replays (the same request served by every variant, each judged) need no weights: the value is
Σ_a π(a | request) · outcome(a), averaged over requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.serve.outcomes import Replay
from learners.routing_data import Example
from policies.learned import LearnedPolicy


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a policy would have achieved on a set of requests."""

    method: str  # "ips" (logged calls) or "replay"
    quality: float | None  # mean quality in [0, 1]; None without usable evidence
    cost: float | None  # mean cost per call (USD)
    shares: dict[str, float]  # expected share of traffic per variant over these requests
    n: int  # requests that contributed
    effective_n: float  # what the (weighted) quality evidence is worth, in calls


def _shares(policy: LearnedPolicy, probs: Sequence[dict[str, float]]) -> dict[str, float]:
    total = dict.fromkeys(policy.variants, 0.0)
    for p in probs:
        for v, x in p.items():
            total[v] += x
    n = len(probs)
    return {v: t / n for v, t in total.items()} if n else total


def estimate_ips(policy: LearnedPolicy, examples: Sequence[Example]) -> Estimate:
    """Self-normalised inverse-propensity estimate of `policy`'s quality and cost on logged calls."""
    probs = [policy.action_probabilities(e.features) for e in examples]
    wq = wq2 = sq = 0.0  # quality part: Σw, Σw², Σw·q
    wc = sc = 0.0  # cost part
    n = 0
    for e, p in zip(examples, probs, strict=True):
        if e.propensity is None or e.propensity <= 0.0 or e.variant not in p:
            continue
        w = p[e.variant] / e.propensity
        n += 1
        wc += w
        sc += w * e.cost
        if e.quality is not None:
            wq += w
            wq2 += w * w
            sq += w * e.quality
    return Estimate(
        method="ips",
        quality=sq / wq if wq > 0.0 else None,
        cost=sc / wc if wc > 0.0 else None,
        shares=_shares(policy, probs),
        n=n,
        effective_n=wq * wq / wq2 if wq2 > 0.0 else 0.0,
    )


def estimate_replay(policy: LearnedPolicy, replays: Sequence[Replay]) -> Estimate:
    """Direct estimate on replays: requests whose outcome is known for the variants `policy` picks."""
    probs: list[dict[str, float]] = []
    q = c = 0.0
    for r in replays:
        p = policy.action_probabilities(r.features)
        if any(x > 0.0 and v not in r.outcomes for v, x in p.items()):
            continue  # an outcome the policy may pick is unknown: this replay cannot score it
        probs.append(p)
        q += sum(x * r.outcomes[v].quality for v, x in p.items() if x > 0.0)
        c += sum(x * r.outcomes[v].cost for v, x in p.items() if x > 0.0)
    n = len(probs)
    return Estimate(method="replay", quality=q / n if n else None, cost=c / n if n else None,
                    shares=_shares(policy, probs), n=n, effective_n=float(n))


@dataclass(frozen=True, slots=True)
class Verdict:
    """Candidate against current on the same evidence."""

    accepted: bool
    reason: str
    quality_delta: float | None  # candidate - current, in quality units (x100 = points)
    cost_ratio: float | None  # candidate / current cost per call


def judge(
    current: Estimate, candidate: Estimate, *, max_quality_drop: float = 0.02, min_effective_n: float = 30.0
) -> Verdict:
    """Accept when the evidence is sufficient, quality drops by at most `max_quality_drop`, and
    the candidate is better somewhere (higher quality or lower cost)."""
    if (
        current.quality is None
        or candidate.quality is None
        or min(current.effective_n, candidate.effective_n) < min_effective_n
    ):
        worth = min(current.effective_n, candidate.effective_n)
        return Verdict(False, f"not enough evidence ({worth:.0f} effective calls < {min_effective_n:.0f})",
                       None, None)
    dq = candidate.quality - current.quality
    ratio = candidate.cost / current.cost if candidate.cost is not None and current.cost else None
    if dq < -max_quality_drop:
        return Verdict(False, f"quality {dq * 100:+.1f} pt exceeds the tolerated drop of "
                              f"{max_quality_drop * 100:.1f} pt", dq, ratio)
    if dq <= 0.0 and (ratio is None or ratio >= 1.0):
        return Verdict(False, "no better than the current policy on quality or cost", dq, ratio)
    return Verdict(True, "better on " + ("quality" if dq > 0.0 else "cost") + " within tolerance", dq, ratio)


def describe(quality_delta: float | None, cost_ratio: float | None) -> str:
    """'quality −0.4 pt; cost −38%' (the evaluation half of a policy diff)."""
    parts = []
    if quality_delta is not None:
        parts.append(f"quality {quality_delta * 100:+.1f} pt".replace("-", "−"))
    if cost_ratio is not None:
        parts.append(f"cost {(cost_ratio - 1.0) * 100:+.0f}%".replace("-", "−"))
    return "; ".join(parts)
