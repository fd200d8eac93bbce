"""A PostgreSQL outage, on a throwaway cluster of the test's own (never the machine's shared one):
feedback is accepted during it and lands afterwards; a gateway started while the database is
down serves, says it is degraded, and writes once the database is back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.store.base import Store
from tests.capture.conftest import poll_store, with_store
from tests.conftest import base_config
from tests.pg_throwaway import ThrowawayCluster, pg_cluster, wait_down

__all__ = ["pg_cluster"]  # the fixture, used by name below
pytestmark = pytest.mark.postgres


def _chat(v1: str, text: str) -> str:
    r = httpx.post(v1 + "/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": text}]},
                   timeout=30)
    assert r.status_code == 200, r.text
    return str(r.headers["x-flywheel-call-id"])


async def _calls(store: Store) -> int:
    try:
        return await store.count_calls()
    except asyncpg.UndefinedTableError:  # the gateway has not migrated the new database yet
        return -1


def _config(fake_upstream: str, tmp_path: Path, url: str) -> dict[str, Any]:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["store"] = {"url": url, "spill_path": str(tmp_path / "spill.jsonl"), "flush_ms": 10}
    return cfg


def test_feedback_during_an_outage_is_accepted_and_lands(
    make_gateway: Any, fake_upstream: str, tmp_path: Path, pg_cluster: ThrowawayCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = make_gateway(_config(fake_upstream, tmp_path, pg_cluster.url))
    before = _chat(gw.v1, "stored before the outage")
    poll_store(pg_cluster.url, _calls, lambda n: n == 1)
    pg_cluster.stop()
    wait_down(pg_cluster.url)
    during = _chat(gw.v1, "answered during the outage")
    statuses = [httpx.post(gw.v1 + "/feedback", json={"call_id": cid, "rating": 1}, timeout=30).status_code
                for cid in (before, during) for _ in range(10)]
    # nothing can be checked while the database is down: accepted, never refused
    assert set(statuses) == {202}, statuses
    old_unknown = "chatcmpl-" + f"{int((time.time() - 3600) * 1000):011x}" + "cd" * 12
    assert httpx.post(gw.v1 + "/feedback", json={"call_id": "not-an-id", "rating": 1}).status_code == 404
    ready = httpx.get(gw.url + "/readyz").json()
    assert ready["status"] == "degraded" and ready["store"]["up"] is False, ready
    pg_cluster.start()
    n = poll_store(pg_cluster.url, lambda s: s.count_feedback(), lambda n: n == 20, timeout=40)
    assert n == 20
    assert with_store(pg_cluster.url, lambda s: s.count_calls()) == 2
    # the outage was logged once when it began and once when it ended, not per request
    outage_lines = [r for r in caplog.records if r.name == "gateway.store.health"]
    assert len(outage_lines) <= 4, [r.getMessage() for r in outage_lines]
    assert httpx.get(gw.url + "/readyz").json()["status"] == "ready"
    # with the database back and nothing waiting, an old id nobody made is known unknown
    assert httpx.post(gw.v1 + "/feedback", json={"call_id": old_unknown, "rating": 1}).status_code == 404


def test_a_gateway_started_while_the_database_is_down_serves_and_writes_later(
    make_gateway: Any, fake_upstream: str, tmp_path: Path, pg_cluster: ThrowawayCluster,
) -> None:
    pg_cluster.stop()
    wait_down(pg_cluster.url)
    gw = make_gateway(_config(fake_upstream, tmp_path, pg_cluster.url))
    ids = [_chat(gw.v1, f"question {i}") for i in range(5)]
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
    assert any("store unavailable" in d for d in ready.json()["degraded"])
    pg_cluster.start()
    n = poll_store(pg_cluster.url, _calls, lambda n: n == len(ids), timeout=40)
    assert n == len(ids)  # migrated and re-ingested once the database came back
    ids.append(_chat(gw.v1, "after the database came back"))
    n = poll_store(pg_cluster.url, lambda s: s.count_calls(), lambda n: n == len(ids), timeout=20)
    assert n == len(ids)
    assert httpx.get(gw.url + "/readyz").json()["status"] == "ready"


def test_an_outage_is_one_artifact_refresh_log_line_and_feedback_answers_alike(
    make_gateway: Any, fake_upstream: str, tmp_path: Path, pg_cluster: ThrowawayCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _config(fake_upstream, tmp_path, pg_cluster.url)
    cfg["learners"] = {"enabled": False, "refresh_s": 0.1}  # the artifact server reloads 10 times a second
    gw = make_gateway(cfg)
    before = _chat(gw.v1, "stored before the outage")
    poll_store(pg_cluster.url, _calls, lambda n: n == 1)
    found = httpx.post(gw.v1 + "/feedback", json={"call_id": before, "correction": "better"}, timeout=30)
    assert found.status_code == 201, found.text
    caplog.clear()
    pg_cluster.stop()
    wait_down(pg_cluster.url)
    time.sleep(1.5)  # ~15 refreshes with the database down
    assert gw.gateway.serving.health.up is False
    pending = httpx.post(gw.v1 + "/feedback", json={"call_id": before, "correction": "better"}, timeout=30)
    assert pending.status_code == 202, pending.text
    # a 202 answers with the fields a 201 does (nothing in them needs the store)
    assert set(pending.json()) == set(found.json()) and pending.json()["call_id"] == before
    serving = [r for r in caplog.records if r.name == "flywheel.serving"]
    assert not serving, [r.getMessage() for r in serving]  # no traceback per route and refresh
    down = [r for r in caplog.records if r.name == "gateway.store.health" and "artifact refresh" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in down]
    pg_cluster.start()
    deadline = time.monotonic() + 30
    while not gw.gateway.serving.health.up and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.gateway.serving.health.up
    assert any("reachable again" in r.getMessage() for r in caplog.records if r.name == "gateway.store.health")
