"""Closed chart buckets are read from the store once per TTL; the open one every time."""

from __future__ import annotations

from gateway.console.cache import BucketCache, aligned_since


async def test_closed_buckets_are_kept_the_open_one_is_reread() -> None:
    reads: list[float] = []

    async def fetch(start: float) -> list[float]:
        reads.append(start)
        return [start]

    cache = BucketCache(ttl_s=60, max_entries=100)
    since = aligned_since(1_000_050.0, 100.0, 3)
    assert since == 999_800.0  # buckets from 999800, 999900, 1000000: the last one holds `now`
    first = await cache.buckets("k", since, 100.0, 3, 1_000_050.0, fetch)
    assert [(i, list(rows)) for i, rows in first] == [(0, [999_800.0]), (1, [999_900.0]), (2, [1_000_000.0])]
    assert len(reads) == 3
    await cache.buckets("k", since, 100.0, 3, 1_000_060.0, fetch)
    assert reads[3:] == [1_000_000.0]  # only the open bucket again
    await cache.buckets("k", since, 100.0, 3, 1_000_050.0 + 61, fetch)
    assert sorted(reads[4:]) == [999_800.0, 999_900.0, 1_000_000.0]  # expired: all again
    await cache.buckets("other", since, 100.0, 3, 1_000_099.0, fetch)
    assert len(reads) == 10  # another key shares nothing


async def test_the_cache_stays_bounded() -> None:
    async def fetch(start: float) -> list[float]:
        return [start]

    cache = BucketCache(ttl_s=1000, max_entries=10)
    for k in range(5):
        await cache.buckets(k, 0.0, 1.0, 4, 100.0, fetch)
    assert len(cache._entries) <= 10
