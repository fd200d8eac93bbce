"""What a policy sees (`Features`), what it answers (`Decision`), and the `Policy` protocol.

The gateway calls `Policy.choose` once per request on the hot path, so policies are pure,
synchronous and cheap: no I/O, no awaiting, no per-call work beyond a little arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Embedding = npt.NDArray[np.floating[Any]]


# eq=False: an ndarray field makes the generated __eq__ raise ("truth value of an array is
# ambiguous"); identity equality is the honest answer for a per-request value.
@dataclass(frozen=True, eq=False, slots=True)
class Features:
    """Cheap facts about one request, computed by the pipeline before the policy runs."""

    route: str
    user: str | None
    key_id: str | None  # virtual key *name*
    prompt_chars: int
    n_messages: int
    has_tools: bool
    embedding: Embedding | None = None  # dense vector of the last user message; None without an embedder
    # What the route's memory (its retrieval index of good answers) holds for this request, from the
    # examples retrieval injected: a cheap model answers well where close, agreeing examples exist.
    memory_score: float = 0.0  # cosine similarity of the nearest retrieved example (0: none retrieved)
    memory_agreement: float = 0.0  # share of retrieved examples whose answer equals the nearest one's


@dataclass(frozen=True, slots=True)
class Decision:
    """The variant to use, the order to try variants in, and why."""

    variant: str
    order: tuple[str, ...]  # `variant` first, then the fallbacks to try in order
    reason: str  # human readable, stored in the call log
    probability: float  # P(variant | features) under the policy, for inverse-propensity evaluation
    version: str | None = None  # the policy artifact that decided (e.g. a canary's), logged as policy_version


@runtime_checkable
class Policy(Protocol):
    """Chooses a route's variant for one request."""

    def choose(self, f: Features) -> Decision:
        """Pick the variant for the request described by `f`."""
        ...


@runtime_checkable
class LearningPolicy(Policy, Protocol):
    """A policy that learns online from feedback and can be stored as an artifact."""

    def update(self, f: Features, variant: str, quality: float, cost: float) -> bool:
        """Learn from one observed outcome; returns False when the update was ignored (frozen)."""
        ...

    def to_params(self) -> dict[str, Any]:
        """JSON-safe parameters from which the policy can be rebuilt exactly."""
        ...


def make_order(chosen: str, fallbacks: Iterable[str]) -> tuple[str, ...]:
    """`chosen` followed by `fallbacks`, without duplicates, keeping the first occurrence."""
    # dict preserves insertion order, which makes this a stable dedup
    return tuple(dict.fromkeys((chosen, *fallbacks)))


def check_variants(variants: Iterable[str], what: str = "variants") -> tuple[str, ...]:
    """Validate a non-empty list of distinct, non-empty variant names and return it as a tuple."""
    names = tuple(variants)
    if not names:
        raise ValueError(f"{what}: at least one variant is required")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: variant names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{what}: duplicate variant(s) {', '.join(dupes)}")
    return names
