"""Carry a learned policy's state into a policy built from newer configuration.

A config reload rebuilds every route's policy from config.toml; the admin's settings (pins,
share caps, `frozen`, cost weight…) must win at once while what the router has learned must
survive. `carry_state(src, dst)` copies the learned statistics of `src` into `dst`, which keeps
its own configuration: exactly `LearnedPolicy.from_params(src.to_params(), **dst's config)`,
without the JSON round trip.
"""

from __future__ import annotations

from policies.learned import LearnedPolicy


def carry_state(src: LearnedPolicy, dst: LearnedPolicy) -> tuple[str, ...]:
    """Copy the learned state of every variant `src` and `dst` share into `dst`; returns their names.

    Nothing is copied (and `()` returned) when the two policies featurise requests differently
    (other `dims` or `seed`): the statistics would describe other coordinates. Variants new in
    `dst` keep their prior; `dst.updates` becomes `src.updates`.
    """
    if src.dims != dst.dims or src._features.seed != dst._features.seed:
        return ()
    a, b = src._bank, dst._bank
    copied: list[str] = []
    for i, v in enumerate(src.variants):
        j = dst._index.get(v)
        if j is None:
            continue
        b.data_precision[j] = a.data_precision[i]
        b.data_target[j] = a.data_target[i]
        b.weight[j] = a.weight[i]
        b.refresh(j)
        dst._cost_sum[j] = src._cost_sum[i]
        dst._cost_n[j] = src._cost_n[i]
        dst._surprise[j] = src._surprise[i]
        dst._since_alarm[j] = src._since_alarm[i]
        dst.drift_alarms[j] = src.drift_alarms[i]
        copied.append(v)
    dst._refresh_costs()
    dst.updates = src.updates
    return tuple(copied)
