"""A route's `policy` table -> the policy object, carrying learned state across config reloads.

Keys of a `learned` policy table that are not `LearnedPolicy` parameters but tell the gateway how
to learn online (see gateway/serve/routing.py):

    unrated = "ignore"        # or "ok": a call without feedback after `unrated_after_s` counts as good
    unrated_after_s = 600     # the window in which feedback is awaited
    replays = 0               # held-out calls per learning cycle replayed on every variant
                              # (learners/routing_replay.py; each costs one call per variant)

`pins` may be a list of tables (`{variant = "large", user = "alice"}`, see policies.Pin) or a
table `{"user:alice" = "large", "key:vip" = "large"}` (a bare name means a user). A route with
`learn = false` gets a frozen policy. config.toml always wins: on a reload the new policy is built
from the new table and only the learned statistics of the previous policy are carried over.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.capture.quality import check_metric
from policies import build_policy
from policies.base import Policy
from policies.carry import carry_state
from policies.learned import LearnedPolicy

log = logging.getLogger("flywheel.routing")

ONLINE_KEYS = ("unrated", "unrated_after_s", "replays")


@dataclass(frozen=True, slots=True)
class OnlineLearning:
    """How feedback becomes online updates for one route (the non-policy keys of its table)."""

    unrated: Literal["ignore", "ok"] = "ignore"
    unrated_after_s: float = 600.0
    replays: int = 0


def online_learning(params: Mapping[str, Any]) -> OnlineLearning:
    """The learning settings in a policy table; ValueError naming a bad value."""
    unrated = params.get("unrated", "ignore")
    if unrated not in ("ignore", "ok"):
        raise ValueError(f"unrated must be 'ignore' or 'ok', got {unrated!r}")
    after = params.get("unrated_after_s", 600.0)
    if isinstance(after, bool) or not isinstance(after, int | float) or not after >= 0:
        raise ValueError(f"unrated_after_s must be a number >= 0, got {after!r}")
    replays = params.get("replays", 0)
    if isinstance(replays, bool) or not isinstance(replays, int) or replays < 0:
        raise ValueError(f"replays must be an integer >= 0, got {replays!r}")
    return OnlineLearning(unrated, float(after), replays)


def _pins(pins: Any) -> list[Any]:
    if not isinstance(pins, Mapping):
        return list(pins)
    out: list[dict[str, Any]] = []
    for who, variant in pins.items():
        kind, _, name = str(who).rpartition(":")
        if kind not in ("", "user", "key"):
            raise ValueError(f"pins: {who!r} must be 'user:NAME', 'key:NAME' or a user name")
        out.append({"variant": variant, "key_id" if kind == "key" else "user": name})
    return out


def policy_params(params: Mapping[str, Any], *, learn: bool = True) -> dict[str, Any]:
    """The table's parameters for `build_policy`: online keys removed, pins normalised, learn=false -> frozen."""
    out = {k: v for k, v in params.items() if k not in ONLINE_KEYS}
    if "pins" in out:
        out["pins"] = _pins(out["pins"])
    if "quality_metric" in out:
        check_metric(out["quality_metric"])
    if not learn:
        out["frozen"] = True
    return out


def build_route_policy(
    route: str,
    kind: str,
    params: Mapping[str, Any],
    *,
    variants: Sequence[str],
    fallbacks: Sequence[str],
    learn: bool = True,
    previous: Policy | None = None,
) -> Policy:
    """Build a route's policy from config; a learned one inherits `previous`'s learned state.

    Raises ValueError (naming the problem) for a bad table.
    """
    table = dict(params)
    if kind == "learned":  # the gateway-side keys and conveniences exist for learned policies only
        online_learning(params)
        table = policy_params(params, learn=learn)
    policy = build_policy(kind, variants=list(variants), fallbacks=list(fallbacks), **table)
    if isinstance(policy, LearnedPolicy) and isinstance(previous, LearnedPolicy):
        kept = carry_state(previous, policy)
        if not kept and previous.updates:
            log.warning("routes.%s.policy: dims/seed changed, the learned state was dropped", route)
    return policy
