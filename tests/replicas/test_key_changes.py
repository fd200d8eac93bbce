"""Keys disabled, enabled and rotated without a restart (gateway/keyring.py): a change made through
one replica's admin API (or the CLI) takes effect on another replica sharing the store within
`[auth] refresh_s`; who did it is logged; the new secret is shown once and stored only as a hash."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.cli import main
from gateway.keyring import hash_key
from tests.conftest import write_toml
from tests.replicas.conftest import keyed_config
from tests.replicas.test_limits import chat

ADMIN = "admin-secret-for-key-changes"
REFRESH_S = 0.2


@pytest.fixture(autouse=True)
def admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_TEST_ADMIN_KEY", ADMIN)


# requested before make_gateway, so the PostgreSQL schema outlives the gateways using it
@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One store both replicas share: a SQLite file or a PostgreSQL schema of the test's own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    url: str = request.getfixturevalue("pg_url")
    return url


def two_replicas(upstream: str, tmp: Path, store_url: str, make_gateway: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Two gateways on one store (each with its own spill file), keys 'app' and 'other'."""
    gws = []
    cfg: dict[str, Any] = {}
    for name in ("a", "b"):
        cfg = keyed_config(upstream, tmp / name, {"app": {}, "other": {}})
        cfg["store"]["url"] = store_url
        cfg["auth"]["refresh_s"] = REFRESH_S
        gws.append(make_gateway(cfg))
    return gws[0], gws[1], cfg


def admin(gw: Any, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{gw.url}/admin/keys/{path}", json=body, headers={"authorization": f"Bearer {ADMIN}"},
                      timeout=10)


def until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held (fails past `timeout`)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the refresh interval"
        time.sleep(0.02)
    return time.monotonic() - start


def stored_text(url: str) -> str:
    """Every key_states and key_events row of the store, as text."""
    from gateway.store import open_store

    async def read() -> str:
        store = open_store(url)
        try:
            return repr(await store.key_states()) + repr(await store.key_events())
        finally:
            await store.close()
    return asyncio.run(read())


def test_disable_on_one_replica_refuses_the_key_on_another_within_the_refresh_interval(
        fake_upstream: str, tmp_path: Path, store_url: str, make_gateway: Any) -> None:
    a, b, _ = two_replicas(fake_upstream, tmp_path, store_url, make_gateway)
    assert chat(b.url, "sk-app").status_code == 200
    r = admin(a, "app/disable", {"who": "alice", "note": "leaked in a screenshot"})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert chat(a.url, "sk-app").status_code == 401  # at once where it was made
    took = until(lambda: chat(b.url, "sk-app").status_code == 401, timeout=REFRESH_S * 5 + 1)
    assert took <= REFRESH_S * 5 + 1
    refused = chat(b.url, "sk-app").json()["error"]
    assert refused["code"] == "key_disabled"
    assert chat(b.url, "sk-other").status_code == 200  # other keys are untouched
    listed = httpx.get(f"{b.url}/admin/keys", headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    app = next(k for k in listed if k["key"] == "app")
    assert app["disabled"] is True and app["changed_by"] == "alice"

    assert admin(b, "app/enable", {"who": "bob"}).status_code == 200
    until(lambda: chat(a.url, "sk-app").status_code == 200, timeout=REFRESH_S * 5 + 1)
    log = httpx.get(f"{a.url}/admin/keys/app/log", headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    assert [(e["action"], e["who"]) for e in log] == [("disable", "alice"), ("enable", "bob")]
    assert log[0]["note"] == "leaked in a screenshot" and log[0]["at"] <= log[1]["at"]


def test_rotate_gives_a_new_secret_once_the_old_one_stops_and_nothing_is_stored_in_clear(
        fake_upstream: str, tmp_path: Path, store_url: str, make_gateway: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    a, b, _ = two_replicas(fake_upstream, tmp_path, store_url, make_gateway)
    caplog.set_level(logging.DEBUG)
    r = admin(a, "app/rotate", {"who": "alice"})
    assert r.status_code == 200
    secret = r.json()["secret"]
    assert secret.startswith("fw-") and r.json()["old_secret_valid_until"] is None
    until(lambda: chat(b.url, "sk-app").status_code == 401, timeout=REFRESH_S * 5 + 1)
    assert chat(a.url, "sk-app").status_code == 401
    for gw in (a, b):
        assert chat(gw.url, secret).status_code == 200
    assert chat(b.url, "sk-other").status_code == 200
    text = stored_text(store_url)
    assert hash_key(secret) in text and secret not in text  # only its hash
    assert secret not in caplog.text and "key app rotated by alice" in caplog.text

    # with a grace period the secret rotated out keeps working until it ends, on every replica
    r2 = admin(b, "app/rotate", {"grace_s": 60})
    newer = r2.json()["secret"]
    assert r2.json()["old_secret_valid_until"] > time.time() + 50
    until(lambda: chat(a.url, newer).status_code == 200, timeout=REFRESH_S * 5 + 1)
    assert chat(a.url, secret).status_code == 200 and chat(b.url, secret).status_code == 200
    assert chat(a.url, "sk-app").status_code == 401  # two rotations ago: gone


def test_bad_key_changes_get_openai_shaped_errors(fake_upstream: str, tmp_path: Path, make_gateway: Any) -> None:
    cfg = keyed_config(fake_upstream, tmp_path, {"app": {}, "off": {"disabled": True}})
    gw = make_gateway(cfg)
    missing = admin(gw, "nobody/disable")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"
    assert admin(gw, "app/rotate", {"grace_s": -1}).json()["error"]["param"] == "grace_s"
    assert admin(gw, "app/disable", {"who": 3}).json()["error"]["param"] == "who"
    conflict = admin(gw, "off/enable")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "disabled_in_config"
    assert httpx.post(f"{gw.url}/admin/keys/app/disable", headers={"authorization": "Bearer sk-app"}).status_code == 401
    assert chat(gw.url, "sk-app").status_code == 200  # none of that changed anything


def test_cli_disable_and_rotate_reach_a_running_gateway(
        fake_upstream: str, tmp_path: Path, make_gateway: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = keyed_config(fake_upstream, tmp_path, {"app": {}})
    cfg["auth"]["refresh_s"] = REFRESH_S
    gw = make_gateway(cfg)
    path = write_toml(cfg, tmp_path / "config.toml")
    assert main(["--config", str(path), "keys", "disable", "app", "--who", "ops", "--note", "incident 7"]) == 0
    until(lambda: chat(gw.url, "sk-app").status_code == 401, timeout=REFRESH_S * 5 + 1)
    assert main(["--config", str(path), "keys", "enable", "app"]) == 0
    assert main(["--config", str(path), "keys", "rotate", "app"]) == 0
    out = capsys.readouterr().out
    secret = next(line.rsplit(" ", 1)[1] for line in out.splitlines() if line.startswith("new secret"))
    until(lambda: chat(gw.url, secret).status_code == 200, timeout=REFRESH_S * 5 + 1)
    assert chat(gw.url, "sk-app").status_code == 401
    assert main(["--config", str(path), "keys", "log", "app"]) == 0
    log = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in log] == ["disable", "enable", "rotate"]
    assert "ops" in log[0] and "incident 7" in log[0] and secret not in "".join(log)
    report = httpx.get(f"{gw.url}/admin/keys", headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
    assert report[0]["disabled"] is False


async def test_a_refresh_read_before_a_change_made_here_does_not_undo_it(tmp_path: Path) -> None:
    """The background refresh may read the store just before this replica saves a change and
    return just after: its older read must not put the change back (the old secret working again)."""
    from gateway.config.settings import parse_settings
    from gateway.keyring import KeyRing
    from gateway.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/keys.db")
    await store.migrate()
    read, release = asyncio.Event(), asyncio.Event()
    real_read = store.key_states

    async def held_read() -> Any:  # the real read, answered only once the change below is saved
        states = await real_read()
        read.set()
        await release.wait()
        return states

    settings = parse_settings(keyed_config("http://127.0.0.1:9/v1", tmp_path, {"app": {}}))
    ring = KeyRing(lambda: settings, lambda: store)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(store, "key_states", held_read)
            refreshing = asyncio.create_task(ring.refresh())
            await read.wait()
        await ring.set_disabled("app", True, who="alice")
        release.set()
        await refreshing
        assert ring.disabled("app")
        await ring.refresh()  # the next read has the change
        assert ring.disabled("app")
    finally:
        await store.close()
