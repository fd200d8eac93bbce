"""Streamed answers carry the upstream's headers like non-streamed ones (request id, processing time,
rate limits), on chat, legacy completions and Responses streams, translated or native; and an
upstream that refuses a streamed request before its first byte keeps its status, code, param and type."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from gateway.http.auth import hash_key
from tests.conftest import base_config, script

UPSTREAM = {"x-request-id": "req_stream_1", "openai-processing-ms": "17",
            "x-ratelimit-remaining-requests": "41", "x-ratelimit-limit-tokens": "9000"}
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def solo(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> tuple[Any, str, openai.OpenAI]:
    """A gateway whose model `solo` has an upstream model of its own (scripts do not leak), and
    `native`, the same upstream model through a provider that passes Responses through."""
    name = f"s-{uuid.uuid4().hex[:6]}"
    cfg = base_config(fake_upstream, tmp_path)
    cfg["providers"]["native"] = {"kind": "openai", "base_url": fake_upstream, "responses": "native"}
    cfg["models"]["solo"] = {"provider": "up", "name": name}
    cfg["models"]["native"] = {"provider": "native", "name": name}
    cfg["retries"]["attempts"] = 1
    gw = make_gateway(cfg)
    return gw, name, openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)


def _forwarded(headers: Any) -> None:
    for name, value in UPSTREAM.items():
        assert headers[name] == value, name


def test_chat_stream_carries_the_upstream_headers(solo: tuple[Any, str, openai.OpenAI], fake_upstream: str) -> None:
    _, name, client = solo
    script(fake_upstream, name, {"headers": UPSTREAM})
    raw = client.chat.completions.with_raw_response.create(model="solo", messages=USER, stream=True)  # type: ignore[arg-type]
    _forwarded(raw.headers)
    assert raw.request_id == "req_stream_1"
    stream = raw.parse()
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "You said: hello"
    assert stream.response.headers["x-request-id"] == "req_stream_1"


def test_completions_stream_carries_the_upstream_headers(solo: tuple[Any, str, openai.OpenAI],
                                                         fake_upstream: str) -> None:
    _, name, client = solo
    script(fake_upstream, name, {"headers": UPSTREAM})
    raw = client.completions.with_raw_response.create(model="solo", prompt="hello", stream=True)
    _forwarded(raw.headers)
    assert raw.request_id == "req_stream_1"
    assert "".join(c.choices[0].text for c in raw.parse() if c.choices) == "You said: hello"


@pytest.mark.parametrize("model", ["solo", "native"])
def test_responses_stream_carries_the_upstream_headers(solo: tuple[Any, str, openai.OpenAI], fake_upstream: str,
                                                       model: str) -> None:
    _, name, client = solo
    script(fake_upstream, name, {"headers": UPSTREAM})
    raw = client.responses.with_raw_response.create(model=model, input="hello", stream=True)
    _forwarded(raw.headers)
    assert raw.request_id == "req_stream_1"
    events = list(raw.parse())
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "You said: hello"  # type: ignore[union-attr]


def test_a_streams_rate_limits_are_flywheels_own_when_it_sets_them(make_gateway: Any, fake_upstream: str,
                                                                   tmp_path: Any) -> None:
    name = f"s-{uuid.uuid4().hex[:6]}"
    cfg = base_config(fake_upstream, tmp_path)
    cfg["models"]["solo"] = {"provider": "up", "name": name}
    cfg["auth"] = {"keys": {"app": {"hash": "sha256:" + hash_key("sk-app"), "rpm": 1000}}}
    gw = make_gateway(cfg)
    script(fake_upstream, name, {"headers": UPSTREAM})
    client = openai.OpenAI(base_url=gw.v1, api_key="sk-app", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="solo", messages=USER, stream=True)  # type: ignore[arg-type]
    list(raw.parse())
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"  # the gateway's limit, not the upstream's
    assert raw.headers["x-ratelimit-remaining-requests"] != "41"
    assert raw.request_id == "req_stream_1"


REFUSAL = {"status": 400, "message": "This model's maximum context length is 8192 tokens.",
           "type": "invalid_request_error", "code": "context_length_exceeded", "param": "messages",
           "headers": {"x-request-id": "req_refused"}}


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses", "responses-native"])
def test_a_refused_stream_keeps_status_code_param_and_type(solo: tuple[Any, str, openai.OpenAI],
                                                           fake_upstream: str, endpoint: str) -> None:
    _, name, client = solo
    script(fake_upstream, name, REFUSAL)
    with pytest.raises(openai.BadRequestError) as exc:
        if endpoint == "chat":
            list(client.chat.completions.create(model="solo", messages=USER, stream=True))  # type: ignore[arg-type]
        elif endpoint == "completions":
            list(client.completions.create(model="solo", prompt="hello", stream=True))
        else:
            list(client.responses.create(model="native" if endpoint == "responses-native" else "solo",
                                         input="hello", stream=True))
    err = exc.value.response.json()["error"]
    assert exc.value.status_code == 400
    assert (err["code"], err["param"], err["type"]) == ("context_length_exceeded", "messages", "invalid_request_error")
    assert exc.value.request_id == "req_refused"
