"""Admin controls over a learned policy: pins (forced variants) and traffic-share caps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from policies.base import Features


@dataclass(frozen=True, slots=True)
class Pin:
    """Forces `variant` for requests matching every condition that is set.

    A segment is described by request facts: `has_tools`, `min_prompt_chars`, `max_prompt_chars`
    (inclusive); `user` and `key_id` pin one end user or one virtual key.
    """

    variant: str
    user: str | None = None
    key_id: str | None = None
    has_tools: bool | None = None
    min_prompt_chars: int | None = None
    max_prompt_chars: int | None = None

    def __post_init__(self) -> None:
        if not self.conditions():
            raise ValueError(f"pin for {self.variant!r} has no condition; use a static policy instead")

    def conditions(self) -> list[str]:
        """The set conditions, rendered for logs: e.g. ["user=alice", "has_tools"]."""
        out: list[str] = []
        if self.user is not None:
            out.append(f"user={self.user}")
        if self.key_id is not None:
            out.append(f"key={self.key_id}")
        if self.has_tools is not None:
            out.append("has_tools" if self.has_tools else "no tools")
        if self.min_prompt_chars is not None:
            out.append(f"prompt_chars≥{self.min_prompt_chars}")
        if self.max_prompt_chars is not None:
            out.append(f"prompt_chars≤{self.max_prompt_chars}")
        return out

    def matches(self, f: Features) -> bool:
        """True when every set condition holds for `f`."""
        return (
            (self.user is None or f.user == self.user)
            and (self.key_id is None or f.key_id == self.key_id)
            and (self.has_tools is None or f.has_tools == self.has_tools)
            and (self.min_prompt_chars is None or f.prompt_chars >= self.min_prompt_chars)
            and (self.max_prompt_chars is None or f.prompt_chars <= self.max_prompt_chars)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, without the unset conditions."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def as_pins(pins: Sequence[Pin | Mapping[str, Any]]) -> tuple[Pin, ...]:
    """Accept pins as `Pin`s or as config tables/dicts (`{variant = "large", user = "alice"}`)."""
    return tuple(p if isinstance(p, Pin) else Pin(**p) for p in pins)


class ShareWindow:
    """Counts which variant each of the last `window` decisions went to, to enforce share caps.

    A variant is over its cap when choosing it again would lift its share of the window above
    the cap. Caps are not enforced until `min_samples` decisions have been seen: a share measured
    over three requests says nothing.
    """

    def __init__(self, n_variants: int, caps: Sequence[float | None], window: int, min_samples: int) -> None:
        if window < 1:
            raise ValueError(f"share_window must be >= 1, got {window}")
        self.caps = tuple(caps)
        self.window = window
        self.min_samples = min(min_samples, window)
        self.counts = [0] * n_variants
        self._ring = [-1] * window
        self._pos = 0
        self._filled = 0

    def allowed(self) -> list[bool]:
        """Which variants may be chosen now (all of them when every variant would be over its cap)."""
        if self._filled < self.min_samples:
            return [True] * len(self.counts)
        full = self._filled >= self.window
        denom = self.window if full else self._filled + 1
        evicted = self._ring[self._pos] if full else -1  # the slot the next decision overwrites
        ok = [
            cap is None or (c + 1 - (v == evicted)) / denom <= cap
            for v, (c, cap) in enumerate(zip(self.counts, self.caps, strict=True))
        ]
        return ok if any(ok) else [True] * len(ok)

    def record(self, v: int) -> None:
        """Note that variant index `v` was chosen."""
        old = self._ring[self._pos]
        if old >= 0:
            self.counts[old] -= 1
        else:
            self._filled += 1
        self._ring[self._pos] = v
        self.counts[v] += 1
        self._pos = (self._pos + 1) % self.window

    def shares(self) -> list[float]:
        """Current share of each variant over the window (zeros before any decision)."""
        n = max(self._filled, 1)
        return [c / n for c in self.counts]
