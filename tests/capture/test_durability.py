"""Durability with real processes: no call row is lost when the gateway is stopped under load
(SIGTERM) or when the database goes down under load (a throwaway PostgreSQL cluster of the
test's own, tests/pg_throwaway.py). Bounded: each test well under a minute."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest

from gateway.store.base import Store
from tests.capture.conftest import Proc, poll_store, with_store, write_config
from tests.pg_throwaway import ThrowawayCluster, pg_cluster

__all__ = ["pg_cluster"]  # the fixture, used by name below

BODY = orjson.dumps({"model": "bot", "messages": [{"role": "user", "content": "Is my order on its way?"}]})
Start = Callable[[list[str], Path, str], Proc]


@dataclass
class Outcome:
    """What the clients saw: call ids of 200 responses, other statuses, transport errors."""

    ok: list[str] = field(default_factory=list)
    other: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    ok_at: list[float] = field(default_factory=list)  # monotonic time of each 200


async def _post(session: aiohttp.ClientSession, url: str, out: Outcome) -> None:
    try:
        async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as r:
            await r.read()
            if r.status == 200:
                out.ok.append(r.headers["x-flywheel-call-id"])
                out.ok_at.append(time.monotonic())
            else:
                out.other[r.status] = out.other.get(r.status, 0) + 1
    except (aiohttp.ClientError, TimeoutError):
        out.transport_errors += 1


async def _stored_ids(store: Store) -> set[str]:
    return {c.id for c in await store.list_calls(limit=1_000_000)}


def _upstream(start: Start, tmp: Path, delay_ms: int) -> str:
    up = start(["-m", "gateway.providers.fakes.server", "--delay-ms", str(delay_ms)], tmp / "upstream.log",
               "/v1/models")
    return up.url + "/v1"


def _gateway(start: Start, config: Path, tmp: Path, tag: str) -> Proc:
    return start(["-m", "flywheel.cli", "--config", str(config), "serve"], tmp / f"gateway-{tag}.log", "/healthz")


def test_sigterm_under_load_loses_no_answered_call(processes: Start, tmp_path: Path) -> None:
    upstream = _upstream(processes, tmp_path, delay_ms=400)
    url = f"sqlite:///{tmp_path}/fw.db"
    config = write_config(tmp_path / "config.toml", url, tmp_path / "spill.jsonl", upstream)
    gw = _gateway(processes, config, tmp_path, "a")
    n = 300

    async def run() -> Outcome:
        out = Outcome()
        connector = aiohttp.TCPConnector(limit=n)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
            tasks = [asyncio.create_task(_post(s, gw.url + "/v1/chat/completions", out)) for _ in range(n)]
            async with httpx.AsyncClient() as c:  # wait until the upstream holds them all (in flight)
                for _ in range(200):
                    got = (await c.get(upstream.removesuffix("/v1") + "/_control/requests",
                                       params={"model": "fake-m"})).json()
                    if len(got) >= n:
                        break
                    await asyncio.sleep(0.02)
            os.kill(gw.proc.pid, signal.SIGTERM)
            await asyncio.gather(*tasks)
        return out

    out = asyncio.run(run())
    # uvicorn re-raises the SIGTERM once its graceful shutdown (and our lifespan) is done
    assert gw.proc.wait(40) in (0, -signal.SIGTERM), gw.log.read_text()[-3000:]
    assert len(out.ok) == n, f"in-flight requests were not finished gracefully: {out}"
    spill = tmp_path / "spill.jsonl"
    if spill.exists() and spill.stat().st_size:  # rows spilled on the way out: a restart re-ingests them
        _gateway(processes, config, tmp_path, "b").stop()
    stored = with_store(url, _stored_ids)
    missing = set(out.ok) - stored
    assert not missing, f"{len(missing)} answered calls have no row"
    assert len(stored) == n


@pytest.mark.postgres
def test_database_down_under_load_spills_and_recovers(processes: Start, tmp_path: Path,
                                                      pg_cluster: ThrowawayCluster) -> None:
    # The outage is a throwaway cluster of this test's own, stopped and started under load:
    # never the machine's shared PostgreSQL, whose other clients a stop would disconnect.
    pg_url = pg_cluster.url
    upstream = _upstream(processes, tmp_path, delay_ms=5)
    config = write_config(tmp_path / "config.toml", pg_url, tmp_path / "spill.jsonl", upstream)
    gw = _gateway(processes, config, tmp_path, "pg")
    outage: list[float] = []

    async def run() -> Outcome:
        out = Outcome()
        stop = asyncio.Event()
        sent = 0

        async def worker(s: aiohttp.ClientSession) -> None:
            nonlocal sent
            while not stop.is_set() and sent < 20_000:
                sent += 1
                await _post(s, gw.url + "/v1/chat/completions", out)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            workers = [asyncio.create_task(worker(s)) for _ in range(8)]
            try:
                await asyncio.sleep(1.5)
                try:
                    outage.append(time.monotonic())
                    await asyncio.to_thread(pg_cluster.stop)
                    await asyncio.sleep(2.0)  # serving on, with the database gone
                finally:
                    await asyncio.to_thread(pg_cluster.start)
                    outage.append(time.monotonic())
                await asyncio.sleep(1.0)
            finally:
                stop.set()
                await asyncio.gather(*workers)
        return out

    out = asyncio.run(run())
    assert out.transport_errors == 0 and not out.other, f"the gateway did not keep serving: {out.other}"
    during = sum(1 for t in out.ok_at if outage[0] + 0.5 < t < outage[1])
    assert during > 50, f"only {during} answers while the database was down"
    ready = httpx.get(gw.url + "/readyz").json()
    assert ready["writer"]["spilled"] > 0, ready  # rows went to the spill file, not nowhere
    # The writer retries every 5 s; give it a few rounds to re-ingest everything.
    n = poll_store(pg_url, lambda st: st.count_calls(), lambda c: c >= len(out.ok), timeout=40)
    assert n == len(out.ok)
    stored = with_store(pg_url, _stored_ids)
    assert set(out.ok) == stored
    assert with_store(pg_url, lambda st: st.count_attempts()) == len(out.ok)
    assert gw.stop() in (0, -signal.SIGTERM)
