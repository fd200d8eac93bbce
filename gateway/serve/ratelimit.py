"""Per-key request and token budgets (requests/min, tokens/min), in memory, per replica.

A sliding-window counter (the current and previous minute, weighted by overlap) gives a
smooth limit at O(1) memory per key, without a deque of timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(slots=True)
class _Window:
    start: float
    current: float = 0.0
    previous: float = 0.0

    def roll(self, now: float) -> None:
        elapsed = now - self.start
        if elapsed >= 2 * WINDOW_S:
            self.start, self.previous, self.current = now - (elapsed % WINDOW_S), 0.0, 0.0
        elif elapsed >= WINDOW_S:
            self.start, self.previous, self.current = self.start + WINDOW_S, self.current, 0.0

    def estimate(self, now: float) -> float:
        overlap = 1.0 - (now - self.start) / WINDOW_S
        return self.previous * max(0.0, overlap) + self.current


class RateLimiter:
    """Answers "may this key make a request now?" and learns token usage after the fact."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}

    def _window(self, table: dict[str, _Window], key: str, now: float) -> _Window:
        w = table.get(key)
        if w is None:
            w = table[key] = _Window(now)
        w.roll(now)
        return w

    def check(self, key: str, rpm: int | None, tpm: int | None) -> float | None:
        """Count one request; returns None when allowed, else seconds to wait (for Retry-After)."""
        now = self._clock()
        if tpm is not None:
            tokens = self._window(self._tokens, key, now)
            if tokens.estimate(now) >= tpm:
                return max(1.0, WINDOW_S - (now - tokens.start))
        if rpm is not None:
            reqs = self._window(self._requests, key, now)
            if reqs.estimate(now) + 1 > rpm:
                return max(1.0, WINDOW_S - (now - reqs.start))
            reqs.current += 1
        return None

    def record_tokens(self, key: str, tokens: int) -> None:
        """Charge tokens a finished call used (token limits are enforced on the next request)."""
        now = self._clock()
        self._window(self._tokens, key, now).current += tokens
