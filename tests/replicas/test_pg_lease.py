"""One learner without Redis: on a PostgreSQL store the lease is an advisory lock held by a session;
it is exclusive, taken over within 2 x its period when the holder's session dies, and `open_lease`
picks the backend (Redis, PostgreSQL, or the local lease on SQLite)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import asyncpg
import pytest

from learners.lease import LocalLease, PostgresLease, RedisLease, open_lease
from tests.replicas.conftest import PG_URL, REDIS_URL

pytestmark = pytest.mark.postgres


async def _wait_held(lease: PostgresLease, timeout: float) -> None:
    start = time.monotonic()
    while not lease.held():
        assert time.monotonic() - start < timeout, "the lease was not taken over in time"
        await asyncio.sleep(0.02)


async def test_the_advisory_lock_is_exclusive_and_taken_over_when_its_session_dies(pg_url: str) -> None:
    ttl = 1.5
    a = PostgresLease(pg_url, prefix="t", ttl_s=ttl)
    b = PostgresLease(pg_url, prefix="t", ttl_s=ttl)
    await a.start()
    await b.start()
    try:
        assert a.held() and not b.held()
        assert await a.confirm() and not await b.confirm()
        await asyncio.sleep(ttl * 1.2)  # checks keep it with a
        assert a.held() and not b.held()
        # the holder dies (as under SIGKILL): it stops checking, its session ends, PostgreSQL frees the lock
        assert a._task is not None
        a._task.cancel()
        admin = await asyncpg.connect(PG_URL)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", a.backend_pid)
        finally:
            await admin.close()
        killed = time.monotonic()
        await _wait_held(b, 2 * ttl)
        assert time.monotonic() - killed <= 2 * ttl
        assert b.fence > a.fence  # the new holder's fencing token is larger
        assert not await a.confirm()  # the old holder cannot confirm with its token
        assert await a.renew() is False  # were it alive after all: it reconnects, and does not lead
        assert not a.held() and b.held()
    finally:
        await a.stop()
        await b.stop()


async def test_a_clean_stop_frees_the_lock_at_once_and_schemas_do_not_share_it(pg_url: str) -> None:
    a = PostgresLease(pg_url, prefix="t", ttl_s=30.0)
    b = PostgresLease(pg_url, prefix="t", ttl_s=0.6)
    other = PostgresLease(PG_URL, prefix="t", ttl_s=30.0)  # the same database, another schema
    await a.start()
    await b.start()
    await other.start()
    try:
        assert a.held() and not b.held() and other.held()
        await a.stop()
        await _wait_held(b, 1.0)  # well before a's 30 s period
    finally:
        for lease in (a, b, other):
            await lease.stop()


def test_open_lease_picks_one_backend() -> None:
    assert isinstance(open_lease(REDIS_URL, prefix="t", ttl_s=5, store_url=PG_URL), RedisLease)
    assert isinstance(open_lease(None, prefix="t", ttl_s=5, store_url=PG_URL), PostgresLease)
    assert isinstance(open_lease(None, prefix="t", ttl_s=5, store_url="sqlite:///x.db"), LocalLease)


async def test_a_deposed_learner_cannot_write_artifacts(pg_url: str) -> None:
    from gateway.store import open_store
    from gateway.store.artifacts import ArtifactRegistry, Manifest
    from gateway.store.base import Store
    from learners.fencing import FencedStore, LeaseLost

    store = open_store(pg_url)
    await store.migrate()
    ttl = 1.5
    a = PostgresLease(pg_url, prefix="t", ttl_s=ttl)
    b = PostgresLease(pg_url, prefix="t", ttl_s=ttl)
    await a.start()
    await b.start()
    fenced_a = FencedStore(store, a)
    reg_a = ArtifactRegistry(cast(Store, fenced_a))
    reg_b = ArtifactRegistry(cast(Store, FencedStore(store, b)))
    try:
        made = await reg_a.save_candidate("bot", "index", {"n": 1}, Manifest(produced_by="a"))
        assert made.version == "i1"
        with pytest.raises(LeaseLost):  # b does not hold the lease
            await reg_b.save_candidate("bot", "index", {"n": 2}, Manifest(produced_by="b"))
        assert a._task is not None
        a._task.cancel()  # a stalls (its checks stop) and its session is cut
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", a.backend_pid)
        finally:
            await admin.close()
        await _wait_held(b, 2 * ttl)
        # a's cycle goes on, unaware: its next write is refused, b's goes through
        with pytest.raises(LeaseLost):
            await reg_a.save_candidate("bot", "index", {"n": 3}, Manifest(produced_by="a"))
        assert fenced_a.refused == 1
        assert (await reg_b.save_candidate("bot", "index", {"n": 4}, Manifest(produced_by="b"))).version == "i2"
        assert [r.produced_by for r in await store.list_artifacts("bot", "index")] == ["a", "b"]
    finally:
        await a.stop()
        await b.stop()
        await store.close()
