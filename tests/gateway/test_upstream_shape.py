"""Upstream answers that are not what they claim, oversized, or endless: each becomes an OpenAI-shaped
error and a logged call with every attempt (issue #18, items 8, 9 and 10), against the real fake upstream."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import base_config, fetch_call, script

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def model() -> str:
    return f"shape-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any, model: str) -> Any:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["server"] = {"max_upstream_response_bytes": 200_000}
    cfg["providers"]["slow"] = {"kind": "openai", "base_url": fake_upstream, "timeout_s": 0.5}
    cfg["models"]["m"] = {"provider": "up", "name": model}
    cfg["models"]["ms"] = {"provider": "slow", "name": model}
    retries = {"attempts": 2, "initial_delay_s": 0.01, "max_delay_s": 0.1, "attempt_timeout_s": 5, "deadline_s": 2}
    cfg["routes"] = {"r": {"variants": ["m"], "retries": retries},
                     "slow": {"variants": ["ms"], "retries": {**retries, "attempts": 1, "deadline_s": 20}}}
    return make_gateway(cfg)


def _post(gw: Any, route: str = "r", **body: Any) -> httpx.Response:
    return httpx.post(gw.v1 + "/chat/completions", json={"model": route, "messages": USER, **body}, timeout=30)


@pytest.mark.parametrize("answer", [
    [{"choices": []}],  # a JSON array
    {"error": {"message": "model overloaded", "type": "server_error"}},  # 200 with an error body
    {"object": "list", "data": []},  # JSON, but not a chat completion
    {"choices": [{"index": 0}]},  # a choice without a message
])
def test_a_malformed_200_is_a_502_and_every_attempt_is_logged(
    gw: Any, fake_upstream: str, model: str, answer: Any
) -> None:
    script(fake_upstream, model, {"json": answer}, {"json": answer})
    r = _post(gw)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    rec = fetch_call(gw, r.headers["x-flywheel-call-id"])
    assert rec.status == 502
    assert [a.status for a in rec.attempts] == [502, 502]
    assert all(a.error for a in rec.attempts)


def test_a_malformed_answer_then_a_good_one_is_served(gw: Any, fake_upstream: str, model: str) -> None:
    script(fake_upstream, model, {"json": {"error": "busy"}})
    r = _post(gw)
    assert r.status_code == 200
    rec = fetch_call(gw, r.headers["x-flywheel-call-id"])
    assert [a.status for a in rec.attempts] == [502, 200]
    assert "busy" in (rec.attempts[0].error or "")


def test_an_oversized_answer_is_a_502_not_retried(gw: Any, fake_upstream: str, model: str) -> None:
    script(fake_upstream, model, {"size": 1_000_000})
    r = _post(gw)
    assert r.status_code == 502
    assert "exceeds the gateway's limit of 200000 bytes" in r.json()["error"]["message"]
    rec = fetch_call(gw, r.headers["x-flywheel-call-id"])
    assert [a.status for a in rec.attempts] == [502]  # the same request would be as large again
    assert _post(gw).status_code == 200  # the pool is sound afterwards


def test_an_oversized_stream_ends_with_an_error_event(gw: Any, fake_upstream: str, model: str) -> None:
    script(fake_upstream, model, {"size": 1_000_000})
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30,
                      json={"model": "r", "messages": USER, "stream": True}) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert "exceeds the gateway's limit" in text
    assert "[DONE]" not in text
    assert sum(len(line) for line in text.splitlines()) < 600_000


@pytest.mark.parametrize("step", [{"drip_s": 0.4}, {"ping_after": 1, "ping_s": 0.1}])
def test_a_dripping_stream_ends_at_its_total_deadline(gw: Any, fake_upstream: str, model: str,
                                                      step: dict[str, Any]) -> None:
    script(fake_upstream, model, {"reply": " ".join(["word"] * 40), **step})
    started = time.monotonic()
    with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30,
                      json={"model": "r", "messages": USER, "stream": True}) as r:
        text = "".join(r.iter_text())
        call_id = r.headers["x-flywheel-call-id"]
    elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4.0  # deadline_s = 2, where the upstream would go on for 16 s or for ever
    assert "upstream_timeout" in text and "[DONE]" not in text
    rec = fetch_call(gw, call_id)
    assert rec.status == 504 and "deadline" in (rec.error or "")


def test_the_provider_timeout_caps_each_attempt(gw: Any, fake_upstream: str, model: str) -> None:
    script(fake_upstream, model, {"delay_s": 3})
    started = time.monotonic()
    r = _post(gw, "slow")
    assert r.status_code == 504
    assert time.monotonic() - started < 2.0  # providers.slow.timeout_s = 0.5, attempt_timeout_s = 5
    rec = fetch_call(gw, r.headers["x-flywheel-call-id"])
    assert len(rec.attempts) == 1 and rec.attempts[0].latency_ms < 1500
