"""The console over HTTP: sessions, CSRF, the read-only mode, controls with who and why, hand-written
versions (console and `flywheel prompts publish`), and that no secret reaches a page."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from flywheel.cli import main
from gateway.console import session
from tests.conftest import RunningGateway, base_config
from tests.console.conftest import ADMIN_KEY, KEY_ENV, Learned, console_config, sign_in
from tests.learners.scenario import ROUTE, Client, correct_everything, write_toml

GOOD_TEMPLATE = """You are the support assistant of {{ route }}. Answer briefly.
Answers about return must mention: 14 days of delivery for a full refund
"""


def test_sessions_are_signed_httponly_strict_and_expire(make_gateway: Callable[..., RunningGateway],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, ADMIN_KEY)
    gw = make_gateway(console_config(tmp_path) | {"console": {"session_hours": 2}})
    h = httpx.Client(base_url=gw.url, follow_redirects=False)
    r = h.get("/console/calls?route=support")
    assert r.status_code == 303 and r.headers["location"] == "/console/login?next=/console/calls%3Froute%3Dsupport"
    assert h.get("/console/api/routes").status_code == 401
    bad = h.post("/console/login", data={"key": "guess", "next": "/console/routes"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    r = h.post("/console/login", data={"key": ADMIN_KEY, "next": "https://evil.example/"})
    assert r.headers["location"] == "/console/routes"  # never an open redirect
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=7200" in cookie
    assert ADMIN_KEY not in cookie and ADMIN_KEY not in h.get("/console/routes").text
    assert h.get("/console/routes").status_code == 200
    value = h.cookies[session.COOKIE]
    tampered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    assert h.get("/console/routes", cookies={session.COOKIE: tampered}).status_code == 303
    assert session.verify(ADMIN_KEY, value) is not None
    assert session.verify(ADMIN_KEY, value, now=time.time() + 7201) is None  # expired
    assert session.verify("another admin key", value) is None  # a changed key ends every session
    # a state change needs the session's CSRF token, and a same-origin (or no) Origin
    csrf = session.verify(ADMIN_KEY, value).csrf  # type: ignore[union-attr]
    form = {"action": "freeze", "note": "holiday"}
    assert h.post("/console/routes/support/action", data=form).status_code == 403
    assert h.post("/console/routes/support/action", data=form | {"csrf": "x" * 32}).status_code == 403
    foreign = h.post("/console/routes/support/action", data=form | {"csrf": csrf},
                     headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403
    ok = h.post("/console/routes/support/action", data=form | {"csrf": csrf})
    assert ok.status_code == 303 and "freeze" in ok.headers["location"]
    out = h.post("/console/logout", data={"csrf": csrf})
    assert "Max-Age=0" in out.headers["set-cookie"]


def test_without_an_admin_key_the_console_is_read_only_and_loopback_only(
        make_gateway: Callable[..., RunningGateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    gw = make_gateway(console_config(tmp_path))
    h = httpx.Client(base_url=gw.url, follow_redirects=False)
    page = h.get("/console/routes")
    assert page.status_code == 200 and "read-only: no admin key configured" in page.text
    assert "Roll back" not in h.get("/console/routes/support").text
    assert "No admin key is configured" in h.get("/console/login").text
    refused = h.post("/console/routes/support/action", data={"action": "freeze", "note": "x", "csrf": ""})
    assert refused.status_code == 403 and "read-only" in refused.text

    def request_from(host: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": "/console/routes", "headers": [],
                        "client": (host, 5000), "query_string": b""})

    assert session.viewer_of(request_from("127.0.0.1"), None).read_only
    with pytest.raises(session.Refused):
        session.viewer_of(request_from("10.1.2.3"), None)


def test_console_can_be_switched_off(make_gateway: Callable[..., RunningGateway], tmp_path: Path) -> None:
    gw = make_gateway(console_config(tmp_path) | {"console": {"enabled": False}})
    assert httpx.get(f"{gw.url}/console/routes").status_code == 404


def _api(c: Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return c.http.post(f"{c.url}/console/api{path}", json=body)


def test_controls_record_who_and_why_and_hold_learning(learned: Learned) -> None:
    c, who = learned.client, session.key_id(ADMIN_KEY)
    assert _api(c, f"/routes/{ROUTE}/action", {"action": "freeze", "note": " "}).status_code == 400
    assert _api(c, f"/routes/{ROUTE}/action", {"action": "freeze", "note": "audit week"}).json()["result"]["frozen"]
    report = c.learn()
    assert report["candidates"] == [] and "learning is frozen" in report["skipped"][0] and who in report["skipped"][0]
    _api(c, f"/routes/{ROUTE}/action", {"action": "unfreeze", "note": "audit done"})
    paused = _api(c, f"/routes/{ROUTE}/action", {"action": "pause", "note": "hold the canary"}).json()
    assert paused["result"]["paused"] and paused["who"] == who
    assert c.learn()["rollout"] == []  # no automatic decision while paused
    refused = _api(c, f"/routes/{ROUTE}/action", {"action": "promote", "version": learned.previous_index,
                                                   "note": "ship it"})
    assert refused.status_code == 409 and "only a canary" in refused.text
    done = _api(c, f"/routes/{ROUTE}/action", {"action": "promote", "version": learned.canary_index,
                                                "note": "reviewed the diff"})
    assert done.status_code == 200, done.text
    versions = c.get(f"/admin/routes/{ROUTE}/templates", kind="index")
    assert versions["current"] == learned.canary_index
    log = c.get(f"/admin/routes/{ROUTE}/log", kind="index")["data"]
    assert log[-1]["to_state"] == "promoted" and log[-1]["reason"] == f"promoted by {who}: reviewed the diff"
    timeline = c.get(f"/console/api/routes/{ROUTE}")["timeline"]
    assert [(e["event"], e["who"], e["reason"]) for e in timeline if e["kind"] == "route"][:4] == [
        ("promote", who, "reviewed the diff"), ("pause", who, "hold the canary"), ("unfreeze", who, "audit done"),
        ("freeze", who, "audit week")]


def test_hand_written_versions_go_through_the_gate_and_the_canary(
        make_gateway: Callable[..., RunningGateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(KEY_ENV, ADMIN_KEY)
    cfg = console_config(tmp_path, canary_share=0.5)
    gw = make_gateway(cfg)
    c = Client(gw.url)
    c.http.headers["authorization"] = f"Bearer {ADMIN_KEY}"
    correct_everything(c)  # held-out calls with references for the evaluation
    h = sign_in(gw.url)
    form = h.get(f"/console/routes/{ROUTE}/publish")
    assert "You are the support assistant of {{ route }}" in form.text
    csrf = session.verify(ADMIN_KEY, h.cookies[session.COOKIE]).csrf  # type: ignore[union-attr]
    missing = h.post(f"/console/routes/{ROUTE}/publish", data={"source": GOOD_TEMPLATE, "note": "", "csrf": csrf})
    assert missing.status_code == 400 and "note saying why is required" in missing.text
    r = h.post(f"/console/routes/{ROUTE}/publish",
               data={"source": GOOD_TEMPLATE, "note": "state the return window", "csrf": csrf})
    assert r.status_code == 303 and "canary" in r.headers["location"], r.headers["location"]
    rows = {v["version"]: v for v in c.get(f"/admin/routes/{ROUTE}/templates")["data"]}
    t1 = rows["t1"]
    assert t1["state"] == "canary" and t1["produced_by"] == f"person:{session.key_id(ADMIN_KEY)}"
    assert t1["evaluation"]["offline"]["verdict"] == "passed" and t1["parent"] == "t0"
    diff = h.get(f"/console/routes/{ROUTE}/diff?kind=template&to=t1").text
    assert "written by admin-" in diff and "+Answers about return must mention" in diff

    # the CLI, in-process against the store: a template that does not render is rejected, with the reason
    c.http.post(f"{gw.url}/console/api/routes/{ROUTE}/action",
                json={"action": "rollback", "version": "t1", "note": "try the CLI"})
    bad = tmp_path / "bad.md"
    bad.write_text("Hello {{ customer_name }}\n", encoding="utf-8")
    config_path = write_toml(cfg, tmp_path / "config.toml")
    assert main(["--config", str(config_path), "prompts", "publish", ROUTE, str(bad), "--note", "personal"]) == 1
    assert "t2: rejected - guardrails" in capsys.readouterr().out
    good = tmp_path / "good.md"
    good.write_text(GOOD_TEMPLATE, encoding="utf-8")
    assert main(["--config", str(config_path), "prompts", "publish", ROUTE, str(good), "--note", "again",
                 "--url", gw.url]) == 0
    assert "t3: canary" in capsys.readouterr().out


def test_no_secret_or_raw_key_reaches_a_page(make_gateway: Callable[..., RunningGateway], fake_upstream: str,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.http.auth import hash_key

    monkeypatch.setenv(KEY_ENV, ADMIN_KEY)
    monkeypatch.setenv("UPSTREAM_SECRET", "sk-upstream-very-secret")
    cfg = base_config(fake_upstream, tmp_path)
    cfg["providers"]["up"]["api_key_env"] = "UPSTREAM_SECRET"
    cfg["auth"] = {"admin_key_env": KEY_ENV, "keys": {"team-a": {"hash": f"sha256:{hash_key('vk-team-a-raw')}"}}}
    gw = make_gateway(cfg)
    r = httpx.post(f"{gw.v1}/chat/completions", headers={"authorization": "Bearer vk-team-a-raw"},
                   json={"model": "bot", "user": "alice@example.com",
                         "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200
    call_id = r.json()["id"]
    h = sign_in(gw.url)
    deadline = time.monotonic() + 10
    while h.get(f"/console/api/calls/{call_id}").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    pages = [h.get(p).text for p in ("/console/routes", "/console/routes/bot", f"/console/calls/{call_id}",
                                     f"/console/api/calls/{call_id}", "/console/calls", "/console/api/calls")]
    assert "team-a" in pages[2]  # the key's name is shown…
    for text in pages:  # …never the key, the provider's secret, the admin key or the user id
        for secret in ("vk-team-a-raw", "sk-upstream-very-secret", ADMIN_KEY, "alice@example.com"):
            assert secret not in text
