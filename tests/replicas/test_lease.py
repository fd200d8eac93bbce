"""One learner at a time: the Redis lease is held by one replica, handed over within 2 x its period
when the holder dies, and artifact versions cannot collide when two learners race."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry, Manifest
from learners.lease import RedisLease
from tests.replicas.conftest import REDIS_URL


async def wait_held(lease: RedisLease, timeout: float) -> float:
    start = time.monotonic()
    while not lease.held():
        if time.monotonic() - start > timeout:
            raise AssertionError("the lease was not taken over in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_lease_is_exclusive_and_taken_over_when_its_holder_dies(prefix: str) -> None:
    ttl = 1.0
    a = RedisLease(REDIS_URL, prefix=prefix, ttl_s=ttl)
    b = RedisLease(REDIS_URL, prefix=prefix, ttl_s=ttl)
    await a.start()
    await b.start()
    try:
        assert a.held() and not b.held()
        await asyncio.sleep(ttl * 1.5)  # renewals keep it with a
        assert a.held() and not b.held()
        # a dies: it stops renewing without handing the lease back (as under SIGKILL)
        assert a._task is not None
        a._task.cancel()
        died = time.monotonic()
        took = await wait_held(b, 2 * ttl + 0.5)
        assert time.monotonic() - died <= 2 * ttl
        assert b.fence == a.fence + 1  # the new holder's fencing token is larger
        assert not a.held()  # and the dead one no longer believes it leads
        assert took > 0
    finally:
        await b.stop()
        a._task = None
        await a.stop()


async def test_a_clean_stop_hands_the_lease_over_at_once(prefix: str) -> None:
    a = RedisLease(REDIS_URL, prefix=prefix, ttl_s=30.0)
    b = RedisLease(REDIS_URL, prefix=prefix, ttl_s=0.6)
    await a.start()
    await b.start()
    try:
        assert a.held() and not b.held()
        await a.stop()
        await wait_held(b, 1.0)  # well before a's 30 s key could have expired
    finally:
        await b.stop()


@pytest.mark.postgres
async def test_racing_learners_never_overwrite_an_artifact_version(pg_url: str) -> None:
    url = pg_url
    stores = [open_store(url) for _ in range(2)]
    try:
        await stores[0].migrate()
        regs = [ArtifactRegistry(s) for s in stores]
        made = await asyncio.gather(*(
            regs[i % 2].save_candidate("bot", "index", {"n": i}, Manifest(produced_by=f"learner-{i}"))
            for i in range(6)))
        versions = sorted(r.version for r in made)
        assert versions == ["i1", "i2", "i3", "i4", "i5", "i6"]  # before: both replicas created i1
        for rec in made:  # every body is the one its learner wrote
            stored = await stores[0].get_artifact("bot", "index", rec.version)
            assert stored is not None and stored.body == rec.body and stored.produced_by == rec.produced_by
        created = [t for t in await stores[0].list_transitions("bot", "index") if t.from_state is None]
        assert len(created) == 6
    finally:
        for s in stores:
            await s.close()
