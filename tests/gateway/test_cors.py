"""Browser clients: CORS preflights answered before the key check, allowed origins get CORS headers
(and can read the call id), and without API keys a cross-origin request that a browser sends
without a preflight (text/plain) is refused before it can spend tokens."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.http.auth import hash_key
from tests.conftest import base_config, received

APP = "https://app.example.com"
EVIL = "https://evil.example.net"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def open_gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["server"] = {"cors_origins": [APP]}
    return make_gateway(cfg)


@pytest.fixture
def keyed_gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["server"] = {"cors_origins": ["*"]}
    cfg["auth"] = {"admin_key_env": None, "keys": {"web": {"hash": "sha256:" + hash_key("fw-web")}}}
    return make_gateway(cfg)


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(url, headers={"origin": origin, "access-control-request-method": "POST",
                                       "access-control-request-headers": "authorization, content-type"})


def test_preflight_is_answered_before_auth(keyed_gw: Any) -> None:
    r = _preflight(keyed_gw.v1 + "/chat/completions", APP)
    assert r.status_code == 204  # no key on a preflight, and no 401 either
    assert r.headers["access-control-allow-origin"] == APP
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "authorization, content-type"


def test_allowed_origin_reads_the_answer_and_its_call_id(keyed_gw: Any) -> None:
    r = httpx.post(keyed_gw.v1 + "/chat/completions", json={"model": "bot", "messages": USER},
                   headers={"origin": APP, "authorization": "Bearer fw-web"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP
    assert "x-flywheel-call-id" in r.headers["access-control-expose-headers"]


def test_disallowed_origin_gets_no_cors_headers(open_gw: Any) -> None:
    assert _preflight(open_gw.v1 + "/chat/completions", EVIL).status_code == 403
    assert "access-control-allow-origin" not in _preflight(open_gw.v1 + "/chat/completions", EVIL).headers
    r = httpx.post(open_gw.v1 + "/chat/completions", json={"model": "bot", "messages": USER},
                   headers={"origin": EVIL})
    assert "access-control-allow-origin" not in r.headers


def test_keyless_gateway_refuses_unpreflighted_cross_origin_posts(open_gw: Any, fake_upstream: str) -> None:
    before = len(received(fake_upstream, "a"))
    body = b'{"model": "bot", "messages": [{"role": "user", "content": "spend my tokens"}]}'
    for origin in (EVIL, APP):
        r = httpx.post(open_gw.v1 + "/chat/completions", content=body,
                       headers={"origin": origin, "content-type": "text/plain"})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "cors_not_preflighted"
    assert len(received(fake_upstream, "a")) == before, "nothing reached the upstream"
    # the same request as a browser app sends it (JSON: preflighted), and a non-browser client, are served
    ok = httpx.post(open_gw.v1 + "/chat/completions", content=body,
                    headers={"origin": APP, "content-type": "application/json"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP
    assert httpx.post(open_gw.v1 + "/chat/completions", content=body).status_code == 200
