"""Upstream faults against a real fake upstream: retries, fallbacks, and the specified errors."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import base_config, fetch_call, script

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"primary-{tag}", f"backup-{tag}"


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any, names: tuple[str, str]) -> Any:
    primary, backup = names
    cfg = base_config(fake_upstream, tmp_path)
    cfg["models"]["p"] = {"provider": "up", "name": primary}
    cfg["models"]["b"] = {"provider": "up", "name": backup}
    cfg["routes"] = {
        "r": {"variants": ["p"], "fallbacks": ["b"]},
        "solo": {"variants": ["p"], "retries": {"attempts": 2, "initial_delay_s": 0.01, "max_delay_s": 2,
                                                "attempt_timeout_s": 0.5, "deadline_s": 5}},
    }
    return make_gateway(cfg)


def _client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)


def _call(gw: Any, model: str = "r", **kw: Any) -> Any:
    return _client(gw).chat.completions.with_raw_response.create(model=model, messages=USER, **kw)


def test_5xx_is_retried_then_succeeds(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], {"status": 500}, {"status": 503})
    raw = _call(gw)
    assert raw.headers["x-flywheel-variant"] == "p"
    rec = fetch_call(gw, raw.headers["x-flywheel-call-id"])
    assert [a.status for a in rec.attempts] == [500, 503, 200]


def test_primary_down_falls_back(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], *[{"status": 503}] * 3)
    raw = _call(gw)
    assert raw.parse().choices[0].message.content == "You said: hi"
    assert raw.headers["x-flywheel-variant"] == "b"
    rec = fetch_call(gw, raw.headers["x-flywheel-call-id"])
    assert [(a.model, a.status) for a in rec.attempts] == [("p", 503), ("p", 503), ("p", 503), ("b", 200)]


def test_one_error_puts_no_model_in_cooldown(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], {"status": 500})
    _call(gw)
    raw = _call(gw)  # the very next request goes to the primary again, first try
    rec = fetch_call(gw, raw.headers["x-flywheel-call-id"])
    assert [(a.model, a.status) for a in rec.attempts] == [("p", 200)]


def test_429_with_retry_after_is_honoured(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], {"status": 429, "retry_after": "1"})
    raw = _call(gw, "solo")
    rec = fetch_call(gw, raw.headers["x-flywheel-call-id"])
    assert [a.status for a in rec.attempts] == [429, 200]
    assert rec.attempts[1].started_at - rec.attempts[0].started_at >= 1.0


def test_429_longer_than_allowed_reaches_the_client_with_retry_after(
    gw: Any, fake_upstream: str, names: tuple[str, str]
) -> None:
    script(fake_upstream, names[0], {"status": 429, "retry_after": "30", "message": "slow down"})
    with pytest.raises(openai.RateLimitError) as exc:
        _call(gw, "solo")
    assert exc.value.response.headers["retry-after"] == "30"
    assert "slow down" in exc.value.message


def test_timeouts_are_retried_then_504(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], {"delay_s": 2}, {"delay_s": 2})
    with pytest.raises(openai.APIStatusError) as exc:
        _call(gw, "solo")
    assert exc.value.status_code == 504
    rec = fetch_call(gw, exc.value.response.headers["x-flywheel-call-id"])
    assert [a.status for a in rec.attempts] == [None, None]
    assert rec.status == 504


def test_connection_reset_is_retried(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], {"reset": True})
    raw = _call(gw, "solo")
    rec = fetch_call(gw, raw.headers["x-flywheel-call-id"])
    assert [a.status for a in rec.attempts] == [None, 200]
    assert "connection" in (rec.attempts[0].error or "")


def test_client_errors_are_not_retried_nor_fallen_back(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], {"status": 400, "message": "maximum context length exceeded"})
    with pytest.raises(openai.BadRequestError) as exc:
        _call(gw)
    assert "maximum context length" in exc.value.message
    rec = fetch_call(gw, exc.value.response.headers["x-flywheel-call-id"])
    assert [a.status for a in rec.attempts] == [400]


def test_stream_failing_before_first_chunk_falls_back(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], *[{"status": 502}] * 3)
    stream = _client(gw).chat.completions.create(model="r", messages=USER, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "You said: hi"


def test_stream_dropped_midway_ends_with_an_error_event(gw: Any, fake_upstream: str, names: tuple[str, str]) -> None:
    script(fake_upstream, names[0], {"break_after": 3})
    stream = _client(gw).chat.completions.create(model="r", messages=USER, stream=True)  # type: ignore[arg-type]
    got = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 3
    assert "stream broke" in str(exc.value) or "upstream" in str(exc.value)


def test_stream_dropped_midway_is_never_a_clean_end_on_the_wire(
    gw: Any, fake_upstream: str, names: tuple[str, str]
) -> None:
    script(fake_upstream, names[0], {"break_after": 2})
    with httpx.stream("POST", gw.v1 + "/chat/completions",
                      json={"model": "r", "messages": USER, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] != "data: [DONE]"
    assert '"error"' in events[-1]
    rec = fetch_call(gw, r.headers["x-flywheel-call-id"])
    assert rec.status == 502 and "stream broke" in (rec.error or "")


def test_stream_stalled_midway_times_out_with_an_error_event(
    gw: Any, fake_upstream: str, names: tuple[str, str]
) -> None:
    script(fake_upstream, names[0], {"stall_after": 2})
    with httpx.stream("POST", gw.v1 + "/chat/completions",
                      json={"model": "solo", "messages": USER, "stream": True}, timeout=10) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert '"error"' in events[-1]
