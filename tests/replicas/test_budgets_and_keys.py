"""Budgets and keys: a budget exhausted mid-day refuses the key's next calls with 429
`budget_exceeded` (spend counted from the store's logged cost and shared through Redis); keys
are listed with their spend (admin API, `flywheel keys report`); disabled keys are refused;
feedback belongs to the key that made the call."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.cli import main
from gateway.limits.base import period_start
from gateway.store import open_store
from gateway.store.records import CallRecord, new_id
from tests.conftest import fetch_call, write_toml
from tests.replicas.conftest import REDIS_URL, keyed_config
from tests.replicas.test_limits import chat

ADMIN = "admin-secret-for-tests"


@pytest.fixture(autouse=True)
def admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_TEST_ADMIN_KEY", ADMIN)


def spent_earlier_today(store_url: str, key: str, cost: float) -> None:
    """A call of `key` made this morning (UTC) that cost `cost`, in the store."""
    async def put() -> None:
        store = open_store(store_url)
        try:
            await store.migrate()
            at = max(period_start("day"), time.time() - 3600)
            await store.insert_calls([CallRecord(id=new_id("chatcmpl"), route="bot", variant="model-a",
                                                 model="model-a", key_id=key, created_at=at, status=200,
                                                 cost_usd=cost, prompt_tokens=10, completion_tokens=10,
                                                 latency_ms=5.0)])
        finally:
            await store.close()
    asyncio.run(put())


@pytest.mark.parametrize("shared", [False, True], ids=["in-process", "redis"])
def test_budget_exhausted_mid_day_refuses_the_keys_next_calls(
        fake_upstream: str, tmp_path: Path, make_gateway: Any, prefix: str, shared: bool) -> None:
    keys = {"app": {"budget_usd": 0.001, "budget_period": "day"}, "other": {"budget_usd": 1.0}}
    limits = {"redis_url": REDIS_URL, "prefix": prefix} if shared else {}
    cfg_a = keyed_config(fake_upstream, tmp_path / "a", keys, limits=limits)
    spent_earlier_today(cfg_a["store"]["url"], "app", 0.00099)  # this morning's calls left $0.00001
    a = make_gateway(cfg_a)
    b = make_gateway(keyed_config(fake_upstream, tmp_path / "b", keys, limits=limits)) if shared else a
    codes = []
    for i in range(12):
        r = chat((a, b)[i % 2].url, "sk-app", "a question long enough to cost something " * 5)
        codes.append(r.status_code)
        if r.status_code == 429:
            break
        time.sleep(0.05)  # spend is added after the call, in the background
    assert codes[0] == 200 and codes[-1] == 429, codes
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded" and "budget of key 'app'" in err["message"]
    for gw in (a, b):  # every replica refuses it now, and other keys are unaffected
        assert chat(gw.url, "sk-app").json()["error"]["code"] == "budget_exceeded"
        assert chat(gw.url, "sk-other").status_code == 200
    listed = httpx.get(f"{a.url}/admin/keys", headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    app = next(k for k in listed if k["key"] == "app")
    assert app["budget_usd"] == 0.001 and app["spent_usd_live"] >= 0.001
    assert httpx.get(f"{a.url}/admin/keys").status_code == 401  # admin only


def test_keys_report_cli_prints_spend_per_key_route_and_day(
        fake_upstream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = keyed_config(fake_upstream, tmp_path, {"app": {"budget_usd": 5.0}, "idle": {}})
    spent_earlier_today(cfg["store"]["url"], "app", 0.25)
    path = write_toml(cfg, tmp_path / "config.toml")
    assert main(["--config", str(path), "keys", "report", "--days", "2"]) == 0
    out = capsys.readouterr().out
    assert "app" in out and "$5.0000" in out and "$0.2500" in out and "idle" in out
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert any(line.startswith(today) and "app" in line and "bot" in line for line in out.splitlines())


def test_a_disabled_key_is_refused_after_a_reload_without_restart(
        fake_upstream: str, tmp_path: Path, make_gateway: Any) -> None:
    cfg = keyed_config(fake_upstream, tmp_path, {"app": {}}, server={"reload_interval_s": 0.1})
    path = write_toml(cfg, tmp_path / "config.toml")
    from gateway.config.settings import load_settings
    from tests.conftest import start_gateway

    gw = start_gateway(load_settings(path), path)
    try:
        assert chat(gw.url, "sk-app").status_code == 200
        cfg["auth"]["keys"]["app"]["disabled"] = True
        write_toml(cfg, path)
        deadline = time.monotonic() + 5
        while (r := chat(gw.url, "sk-app")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.status_code == 401 and r.json()["error"]["code"] == "key_disabled"
    finally:
        gw.stop()


def test_feedback_on_another_keys_call_is_refused(fake_upstream: str, tmp_path: Path, make_gateway: Any) -> None:
    gw = make_gateway(keyed_config(fake_upstream, tmp_path, {"fast": {}, "support": {}}))
    call_id = chat(gw.url, "sk-support").json()["id"]
    fetch_call(gw, call_id)

    def feedback(key: str) -> httpx.Response:
        return httpx.post(f"{gw.url}/v1/feedback", headers={"authorization": f"Bearer {key}"},
                          json={"call_id": call_id, "correction": "a poisoned answer"}, timeout=10)

    refused = feedback("sk-fast")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_your_call"
    assert feedback("sk-support").status_code == 201  # its own call
    assert feedback(ADMIN).status_code == 201  # the admin key may post on any call
