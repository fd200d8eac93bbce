"""No-log calls (header or per-key opt-out) store metadata only; `[store] log_calls = false`
stores no calls at all while feedback keeps working."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from gateway.http.auth import hash_key
from tests.capture.conftest import poll_store, pseudonym, with_store
from tests.conftest import base_config, fetch_call
from tests.store.factories import make_call

MESSAGES = [{"role": "user", "content": "my secret plan is to buy the moon"}]


def _chat(url: str, headers: dict[str, str] | None = None, user: str = "u1") -> str:
    r = httpx.post(url + "/chat/completions", json={"model": "bot", "messages": MESSAGES, "user": user},
                   headers=headers or {})
    assert r.status_code == 200, r.text
    assert "buy the moon" in r.text  # the client still gets the whole answer
    call_id: str = r.headers["x-flywheel-call-id"]
    return call_id


def _assert_metadata_only(rec: Any, user: str) -> None:
    assert rec.no_log is True
    assert rec.request is None and rec.response is None
    assert rec.prompt_tokens and rec.completion_tokens and rec.latency_ms > 0
    assert rec.cost_usd is not None and rec.cost_usd > 0
    assert [a.status for a in rec.attempts] == [200]
    assert (rec.route, rec.user) == ("bot", user)


def test_no_log_header_stores_metadata_only(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    gw = make_gateway(base_config(fake_upstream, tmp_path))
    quiet = _chat(gw.v1, {"x-flywheel-no-log": "1"})
    loud = _chat(gw.v1)
    _assert_metadata_only(fetch_call(gw, quiet), pseudonym(gw, "u1"))
    rec = fetch_call(gw, loud)
    assert rec.no_log is False and rec.request["messages"] == MESSAGES and rec.response is not None


def test_per_key_opt_out_stores_metadata_only(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    cfg = base_config(fake_upstream, tmp_path, auth={"keys": {
        "quiet-app": {"hash": f"sha256:{hash_key('fw-quiet')}", "no_log": True},
        "loud-app": {"hash": f"sha256:{hash_key('fw-loud')}"},
    }})
    gw = make_gateway(cfg)
    quiet = _chat(gw.v1, {"authorization": "Bearer fw-quiet"})
    loud = _chat(gw.v1, {"authorization": "Bearer fw-loud"})
    rec = fetch_call(gw, quiet)
    _assert_metadata_only(rec, pseudonym(gw, "u1"))
    assert rec.key_id == "quiet-app"
    assert fetch_call(gw, loud).request is not None
    # no text means no implicit signals either: a repeated no-log prompt infers nothing
    _chat(gw.v1, {"authorization": "Bearer fw-quiet"})
    marker = _chat(gw.v1, {"authorization": "Bearer fw-loud"}, user="u2")
    _chat(gw.v1, {"authorization": "Bearer fw-loud"}, user="u2")  # a logged regeneration, written after
    url = gw.gateway.settings.store.url
    assert len(poll_store(url, lambda s: s.list_feedback(call_ids=[marker]), lambda v: len(v) == 1)) == 1
    assert poll_store(url, lambda s: s.list_feedback(call_ids=[quiet]), lambda v: True) == []


def test_log_calls_off_stores_no_call_but_feedback_still_works(
    make_gateway: Any, fake_upstream: str, tmp_path: Path
) -> None:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["store"]["log_calls"] = False
    gw = make_gateway(cfg)
    url = gw.gateway.settings.store.url
    unlogged = _chat(gw.v1)
    assert gw.gateway.writer is not None and gw.gateway.writer.stats.queued == 0
    assert not gw.gateway.writer.pending(unlogged)
    # a call stored earlier (e.g. before logging was switched off) still takes feedback
    with_store(url, lambda s: s.insert_calls([make_call(1, id="chatcmpl-earlier")]))
    r = httpx.post(gw.v1 + "/feedback", json={"call_id": "chatcmpl-earlier", "rating": 1})
    assert r.status_code == 201, r.text
    rows = poll_store(url, lambda s: s.list_feedback(call_ids=["chatcmpl-earlier"]), lambda v: len(v) == 1)
    assert [f.rating for f in rows] == [1]
    assert with_store(url, lambda s: s.count_calls()) == 1  # only the one inserted directly
    # the unlogged call is young: it might still be in flight, so its feedback is accepted (202);
    # an id as old as a finished call with nothing waiting to be written is known to be unknown
    assert httpx.post(gw.v1 + "/feedback", json={"call_id": unlogged, "rating": 1}).status_code == 202
    old = "chatcmpl-" + f"{int((time.time() - 3600) * 1000):011x}" + "ab" * 12
    assert httpx.post(gw.v1 + "/feedback", json={"call_id": old, "rating": 1}).status_code == 404
