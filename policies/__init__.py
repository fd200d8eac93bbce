"""How a route's variant is chosen for each request: static, weighted, fallback chain, or learned.

`build_policy(kind, **params)` is the single factory the gateway uses. Policies are pure and
synchronous: `choose(features) -> Decision` runs on the hot path; a learned policy also takes
`update(features, variant, quality, cost)` from the feedback path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from policies.base import Decision, Features, LearningPolicy, Policy, make_order
from policies.controls import Pin
from policies.fallback import FallbackPolicy
from policies.learned import LearnedPolicy
from policies.static import StaticPolicy
from policies.summary import summarise_change
from policies.weighted import WeightedPolicy

__all__ = [
    "POLICY_KINDS",
    "Decision",
    "FallbackPolicy",
    "Features",
    "LearnedPolicy",
    "LearningPolicy",
    "Pin",
    "Policy",
    "StaticPolicy",
    "WeightedPolicy",
    "build_policy",
    "make_order",
    "summarise_change",
]

POLICY_KINDS = ("static", "weighted", "fallback", "learned")


def _static(variants: Sequence[str] = (), variant: str | None = None, **kw: Any) -> StaticPolicy:
    if variant is None:
        if not variants:
            raise ValueError("policy 'static': needs `variant` or a non-empty `variants`")
        variant = variants[0]
    return StaticPolicy(variant, **kw)


def _weighted(
    variants: Sequence[str] = (), weights: dict[str, float] | None = None, **kw: Any
) -> WeightedPolicy:
    if weights is None:
        if not variants:
            raise ValueError("policy 'weighted': needs `weights` or a non-empty `variants`")
        weights = dict.fromkeys(variants, 1.0)  # no weights configured: an even split
    elif variants:
        unknown = sorted(set(weights) - set(variants))
        if unknown:
            raise ValueError(f"policy 'weighted': weights name unknown variant(s) {', '.join(unknown)}")
    return WeightedPolicy(weights, **kw)


def _fallback(variants: Sequence[str] = (), chain: Sequence[str] | None = None, **kw: Any) -> FallbackPolicy:
    return FallbackPolicy(chain if chain is not None else variants, **kw)


def _learned(variants: Sequence[str] = (), **kw: Any) -> LearnedPolicy:
    return LearnedPolicy(variants, **kw)


def _accepted(fn: Callable[..., Any], target: Callable[..., Any]) -> set[str]:
    names = set(inspect.signature(fn).parameters) | set(inspect.signature(target).parameters)
    return names - {"kw", "self"}


_BUILDERS: dict[str, tuple[Callable[..., Policy], Callable[..., Any]]] = {
    "static": (_static, StaticPolicy),
    "weighted": (_weighted, WeightedPolicy),
    "fallback": (_fallback, FallbackPolicy),
    "learned": (_learned, LearnedPolicy),
}


def build_policy(kind: str, **params: Any) -> Policy:
    """Build a policy of `kind` from plain parameters (e.g. a route's config table).

    Every kind accepts `variants` (the route's variants) and `fallbacks`; then
    static: `variant` (default variants[0]); weighted: `weights` (default even), `sticky`, `salt`, `rng`;
    fallback: `chain` (default variants); learned: see `LearnedPolicy`.
    Unknown kinds and unknown parameters raise ValueError naming them.
    """
    entry = _BUILDERS.get(kind)
    if entry is None:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {', '.join(POLICY_KINDS)}")
    builder, target = entry
    unknown = sorted(set(params) - _accepted(builder, target))
    if unknown:
        raise ValueError(f"policy {kind!r}: unknown parameter(s) {', '.join(unknown)}")
    return builder(**params)
