"""Human-readable summary of how routing changes between two versions of a learned policy."""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import Features
from policies.learned import LearnedPolicy


def summarise_change(old: LearnedPolicy, new: LearnedPolicy, sample_features: Sequence[Features]) -> str:
    """One line describing how routing moves from `old` to `new` on `sample_features`.

    E.g. "share to small 41% → 63%, large 59% → 37%; cost_weight 0.5 → 0.3; +1200 updates".
    Shares are expected shares (exploration included, share caps ignored).
    """
    names = list(dict.fromkeys((*old.variants, *new.variants)))
    n = len(sample_features)

    def shares(policy: LearnedPolicy) -> dict[str, float]:
        total = dict.fromkeys(names, 0.0)
        for f in sample_features:
            for v, p in policy.action_probabilities(f).items():
                total[v] += p
        return {v: t / n for v, t in total.items()} if n else total

    before, after = shares(old), shares(new)
    moved = sorted(names, key=lambda v: before[v] - after[v])  # gainers first
    parts = [f"{v} {before[v]:.0%} → {after[v]:.0%}" for v in moved if abs(after[v] - before[v]) >= 0.005]
    text = f"share to {', '.join(parts)}" if parts else f"no change in traffic shares over {n} requests"
    changes = []
    for key in (
        "cost_weight",
        "min_quality",
        "explore",
        "ucb",
        "decay",
        "drift_alarm",
        "frozen",
        "max_share",
    ):
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            changes.append(f"{key} {a} → {b}")
    if old.pins != new.pins:
        changes.append(f"pins {len(old.pins)} → {len(new.pins)}")
    if new.updates != old.updates:
        changes.append(f"{new.updates - old.updates:+d} updates")
    return "; ".join([text, *changes])
