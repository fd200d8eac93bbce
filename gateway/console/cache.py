"""Closed time buckets of the console's charts, kept for a few minutes.

A bucket that has ended (all but the newest of a page's buckets) no longer changes, except for
calls that arrive late (a spill file re-ingested) or are deleted (retention, forget): the store
aggregates it once and the figures are kept for `TTL_S`, so a 30-day page view re-reads only its
open bucket. Bucket boundaries are aligned to multiples of the bucket width, so successive page
views share them. One cache per gateway process, bounded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")
TTL_S = 300.0
MAX_ENTRIES = 50_000


def aligned_since(now: float, width_s: float, buckets: int) -> float:
    """The start of the first of `buckets` buckets whose last one contains `now`."""
    return (now // width_s + 1) * width_s - buckets * width_s


class BucketCache:
    """Per-bucket results of the store's aggregate queries, closed buckets kept for TTL_S."""

    def __init__(self, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, list[object]]] = {}

    async def buckets(self, key: Hashable, since: float, width_s: float, n: int, now: float,
                      fetch: Callable[[float], Awaitable[Sequence[T]]]) -> list[tuple[int, Sequence[T]]]:
        """(bucket index, rows) for each of `n` buckets from `since`; `fetch(start)` reads one bucket."""
        out: list[tuple[int, Sequence[T]]] = []
        for i in range(n):
            start = since + i * width_s
            closed = start + width_s <= now
            entry = self._entries.get((key, width_s, start)) if closed else None
            if entry is not None and entry[0] > now:
                out.append((i, entry[1]))  # type: ignore[arg-type]
                continue
            rows = await fetch(start)
            if closed:
                if len(self._entries) >= self.max_entries:
                    self._evict(now)
                self._entries[(key, width_s, start)] = (now + self.ttl_s, list(rows))
            out.append((i, rows))
        return out

    def _evict(self, now: float) -> None:
        live = {k: v for k, v in self._entries.items() if v[0] > now}
        if len(live) >= self.max_entries:  # all fresh: drop the older half
            live = dict(sorted(live.items(), key=lambda kv: kv[1][0])[len(live) // 2:])
        self._entries = live


