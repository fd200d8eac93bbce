"""One cycle of a route at a time across replicas (learners/route_lock.py): `POST /admin/learn` on
replica B while replica A's cycle of that route holds the route's cycle lock answers `busy` and
creates no candidate, on Redis and (without Redis) on a PostgreSQL advisory lock; and a routing
policy write by a holder deposed from that lock is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.store import open_store
from gateway.store.base import Store
from learners.fencing import FencedStore, LeaseLost
from learners.route_lock import RedisHold, RouteHold
from tests.replicas.conftest import REDIS_URL
from tests.routing.conftest import routing_config
from tests.routing.test_learner import seed

pytestmark = pytest.mark.postgres
T = TypeVar("T")


def on_loop(gw: Any, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the gateway's own event loop (its lease and store live there)."""
    task = gw.learning._task
    assert task is not None
    return asyncio.run_coroutine_threadsafe(coro, task.get_loop()).result(60)


def replicas(request: pytest.FixtureRequest, tmp: Path, redis_prefix: str | None) -> tuple[Any, Any, str]:
    """Two gateways (A, B) with the learned route `smart` on one seeded PostgreSQL store, sharing
    Redis when `redis_prefix` is given (else the lease and cycle locks are advisory locks)."""
    url = cast(str, request.getfixturevalue("pg_url"))  # set up before (torn down after) the gateways
    asyncio.run(seed(url))  # 400 rated calls: enough for a policy candidate
    make_gateway = request.getfixturevalue("make_gateway")
    gws = []
    for name in ("a", "b"):
        cfg = routing_config(tmp / name)
        cfg["store"]["url"] = url
        if redis_prefix is not None:
            cfg["limits"] = {"redis_url": REDIS_URL, "prefix": redis_prefix}
        gws.append(make_gateway(cfg))
    return gws[0], gws[1], url


async def policy_versions(url: str) -> list[str]:
    store = open_store(url)
    try:
        return [a.version for a in await store.list_artifacts("smart", "policy")]
    finally:
        await store.close()


def learn(gw: Any) -> dict[str, Any]:
    r = httpx.post(gw.url + "/admin/learn", json={"route": "smart"}, timeout=120)
    assert r.status_code == 200, r.text
    return cast(dict[str, Any], r.json())


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_admin_learn_on_b_while_a_cycle_holds_the_route_answers_busy(
        request: pytest.FixtureRequest, tmp_path: Path, prefix: str, backend: str) -> None:
    a, b, url = replicas(request, tmp_path, prefix if backend == "redis" else None)
    hold: RouteHold | None = on_loop(a, a.learning.lease.hold_route("smart"))  # A's cycle of `smart` runs
    assert hold is not None
    try:
        report = learn(b)
        assert report["route"] == "smart"
        assert any(s.startswith("busy: another replica") for s in report["skipped"]), report["skipped"]
        assert report["candidates"] == [] and report["policy"] is None and report["eval_calls"] == 0
        assert asyncio.run(policy_versions(url)) == []  # no duplicate candidate
        assert learn(b)["skipped"][0].startswith("busy"), "still busy while A's cycle runs"
    finally:
        on_loop(a, hold.release())
    report = learn(b)  # A's cycle ended: B runs its own now
    assert not any(s.startswith("busy") for s in report["skipped"]), report["skipped"]
    assert report["policy"]["version"] == "p1"
    assert asyncio.run(policy_versions(url)) == ["p1"]
    # and B's finished cycle freed the lock: A may take it again
    again = on_loop(a, a.learning.lease.hold_route("smart"))
    assert again is not None
    on_loop(a, again.release())


def test_a_routing_policy_write_by_a_deposed_holder_is_refused(
        request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> None:
    a, _, url = replicas(request, tmp_path, prefix)
    hold = on_loop(a, a.learning.lease.hold_route("smart"))
    assert isinstance(hold, RedisHold)

    async def depose() -> int:
        """A's key expires (a stalled holder) and another replica's cycle takes the route."""
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            await r.delete(hold.key)
            rival = await RedisHold.take(r, hold.key, "rival", 30.0)
            assert rival is not None
            rival._task.cancel()  # the rival's key lives 30 s: longer than this test
            return rival.fence
        finally:
            await r.aclose()

    rival_fence = asyncio.run(depose())
    assert rival_fence > hold.fence  # the successor's token is larger
    fenced = cast(Store, FencedStore(a.gateway.open_store(), hold))
    with pytest.raises(LeaseLost):  # A's policy candidate would be written over the rival's cycle
        on_loop(a, a.learning.routing.learn("smart", store=fenced))
    assert asyncio.run(policy_versions(url)) == []
    assert not on_loop(a, hold.confirm())
    on_loop(a, hold.release())  # compare-and-delete: the rival's key stays

    async def rival_still_holds() -> bool:
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            return bool(await r.get(hold.key) == f"rival|{rival_fence}".encode())
        finally:
            await r.aclose()

    assert asyncio.run(rival_still_holds())


def test_the_cli_in_process_cycle_takes_the_same_lock(
        request: pytest.FixtureRequest, tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`flywheel learn ROUTE` (a cycle in the CLI's own process, no lease renewal) is fenced too."""
    import json

    import redis

    from flywheel.cli import main
    from tests.conftest import write_toml

    url = cast(str, request.getfixturevalue("pg_url"))
    asyncio.run(seed(url))
    cfg = routing_config(tmp_path)
    cfg["store"]["url"] = url
    cfg["limits"] = {"redis_url": REDIS_URL, "prefix": prefix}
    path = write_toml(cfg, tmp_path / "config.toml")
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.set(f"{prefix}:cycle:smart", "a-serving-replica|7", px=30_000)  # its cycle of `smart` runs
        assert main(["--config", str(path), "learn", "smart", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["skipped"][0].startswith("busy: another replica") and report["policy"] is None
        assert asyncio.run(policy_versions(url)) == []
        r.delete(f"{prefix}:cycle:smart")  # that cycle ended
        assert main(["--config", str(path), "learn", "smart", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["policy"]["version"] == "p1"
        assert r.get(f"{prefix}:cycle:smart") is None  # the CLI's cycle freed the lock
    finally:
        r.delete(f"{prefix}:cycle:smart", f"{prefix}:cycle:smart:fence")
        r.close()
