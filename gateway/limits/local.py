"""The in-process limiter: an exact sliding window per bucket, per replica.

Without `[limits] redis_url` every replica keeps its own counts, so N replicas allow N times each
limit (the README says so). Budgets start from the store's logged spend (`seed_spend`) and then
count this replica's calls.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.limits.base import WINDOW_S, Admission, Bucket, Budget, Reservation, limit_headers, period_id


@dataclass(slots=True)
class _Log:
    """Entries of the last minute: (admitted at, call, tokens); `total` sums their tokens."""

    entries: deque[tuple[float, str, int]] = field(default_factory=deque)
    total: int = 0
    tokens: dict[str, int] = field(default_factory=dict)  # call -> tokens it holds now

    def expire(self, cutoff: float) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            _, call, _ = self.entries.popleft()
            self.total -= self.tokens.pop(call, 0)

    def wait_for(self, need: int, now: float) -> float:
        """Seconds until `need` tokens (or, with tokens 1 per entry, entries) have expired."""
        freed = 0
        for at, call, _ in self.entries:
            freed += self.tokens.get(call, 1)
            if freed >= need:
                return at + WINDOW_S - now
        return WINDOW_S


class LocalLimiter:
    """`Limiter` in this process's memory (no I/O: admit never waits)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, _Log] = {}
        self._tokens: dict[str, _Log] = {}
        self._spend: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to close."""

    def _log(self, table: dict[str, _Log], name: str, cutoff: float) -> _Log:
        log = table.get(name)
        if log is None:
            log = table[name] = _Log()
        log.expire(cutoff)
        return log

    async def admit(self, buckets: list[Bucket], tokens: int, budget: Budget | None, call: str) -> Admission:
        """Count one request and reserve `tokens` in every bucket, or refuse without counting anything."""
        if budget is not None:
            spent = self._spend.get((budget.key, budget.period_id), 0.0)
            if spent >= budget.limit_usd:
                return Admission(False, refusal="budget", bucket=f"key:{budget.key}", spent_usd=spent,
                                 retry_after_s=0.0)
        now = self._clock()
        cutoff = now - WINDOW_S
        for b in buckets:
            if b.rpm is not None:
                reqs = self._log(self._requests, b.name, cutoff)
                if len(reqs.entries) + 1 > b.rpm:
                    return Admission(False, refusal="requests", bucket=b.name,
                                     retry_after_s=reqs.wait_for(len(reqs.entries) + 1 - b.rpm, now))
            if b.tpm is not None:
                if tokens > b.tpm:
                    return Admission(False, refusal="too_large", bucket=b.name)
                toks = self._log(self._tokens, b.name, cutoff)
                if toks.total + tokens > b.tpm:
                    return Admission(False, refusal="tokens", bucket=b.name,
                                     retry_after_s=toks.wait_for(toks.total + tokens - b.tpm, now))
        held: list[str] = []
        for b in buckets:
            if b.rpm is not None:
                self._requests[b.name].entries.append((now, call, 1))
            if b.tpm is not None:
                log = self._tokens[b.name]
                log.entries.append((now, call, tokens))
                log.tokens[call] = tokens
                log.total += tokens
                held.append(b.name)
        headers = self._headers(buckets[0], now) if buckets else {}
        return Admission(True, headers, reservation=Reservation(call, tuple(held), tokens, now) if held else None)

    def _headers(self, b: Bucket, now: float) -> dict[str, str]:
        reqs, toks = self._requests.get(b.name), self._tokens.get(b.name)
        n = len(reqs.entries) if reqs else 0
        reset_r = reqs.entries[0][0] + WINDOW_S - now if reqs and reqs.entries else 0.0
        used = toks.total if toks else 0
        reset_t = toks.entries[0][0] + WINDOW_S - now if toks and toks.entries else 0.0
        return limit_headers(b.rpm, (b.rpm or 0) - n, reset_r, b.tpm, (b.tpm or 0) - used, reset_t)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace the reserved tokens by the ones used (nothing when the reservation has expired)."""
        if reservation.settled:
            return
        reservation.settled = True
        for name in reservation.buckets:
            log = self._tokens.get(name)
            if log is not None and reservation.call in log.tokens:
                log.total += used_tokens - log.tokens[reservation.call]
                log.tokens[reservation.call] = used_tokens

    def add_spend(self, key: str, cost_usd: float, now: float | None = None) -> None:
        """Count a finished call's cost toward its key's day and month."""
        for period in ("day", "month"):
            pid = period_id(period, now)  # type: ignore[arg-type]
            self._spend[(key, pid)] = self._spend.get((key, pid), 0.0) + cost_usd

    async def spent(self, key: str, period_id: str) -> float:
        """What `key` spent in the period, as this replica knows it."""
        return self._spend.get((key, period_id), 0.0)

    async def seed_spend(self, key: str, period_id: str, amount_usd: float) -> None:
        """Start the period's count from the store's figure (at start-up)."""
        self._spend[(key, period_id)] = max(self._spend.get((key, period_id), 0.0), amount_usd)
