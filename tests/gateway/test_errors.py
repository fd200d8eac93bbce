"""Every error a client can meet is OpenAI-shaped, with OpenAI's status code, and maps onto the
SDK's own exception classes."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from gateway.http.auth import hash_key
from tests.conftest import base_config, received, script
from tests.openapi import validate

USER = [{"role": "user", "content": "hi"}]


def _envelope(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    validate("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["server"] = {"max_body_bytes": 20_000}
    return make_gateway(cfg)


def test_malformed_json_is_400(gw: Any) -> None:
    r = httpx.post(gw.v1 + "/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in _envelope(r)["message"]


def test_missing_messages_names_the_param(gw: Any) -> None:
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="bot", messages=None)  # type: ignore[arg-type]
    assert exc.value.status_code == 400
    err = _envelope(exc.value.response)
    assert err["param"] == "messages"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "bot", "messages": []}, "messages"),
        ({"model": "bot", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "bot", "messages": USER, "n": 0}, "n"),
        ({"model": "bot", "messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER}, "model"),
        ({"model": "bot", "messages": USER, "response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(gw: Any, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gw.v1 + "/chat/completions", json=body)
    assert r.status_code == 400
    assert _envelope(r)["param"] == param


def test_unknown_model_is_404_model_not_found(gw: Any) -> None:
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-nonexistent", messages=USER)  # type: ignore[arg-type]
    assert _envelope(exc.value.response)["code"] == "model_not_found"


def test_body_over_the_limit_is_413(gw: Any) -> None:
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="bot", messages=[{"role": "user", "content": "x" * 30_000}])
    assert exc.value.status_code == 413
    assert "20000 bytes" in _envelope(exc.value.response)["message"]


def test_chunked_body_over_the_limit_is_413(gw: Any) -> None:
    def chunks() -> Any:
        for _ in range(30):
            yield b"x" * 1000

    r = httpx.post(gw.v1 + "/chat/completions", content=chunks())
    assert r.status_code == 413


def test_upstream_5xx_after_retries_keeps_its_status_and_stops_sdk_retries(
    make_gateway: Any, fake_upstream: str, tmp_path: Any
) -> None:
    name = f"down-{uuid.uuid4().hex[:6]}"
    cfg = base_config(fake_upstream, tmp_path)
    cfg["models"]["down"] = {"provider": "up", "name": name}
    gw = make_gateway(cfg)
    script(fake_upstream, name, *[{"status": 500, "message": "kaboom inside"}] * 3)
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=2)  # the SDK's default
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="down", messages=USER)  # type: ignore[arg-type]
    assert exc.value.status_code == 500  # not 502: SDKs map the two to different exceptions
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert len(received(fake_upstream, name)) == 3, "the gateway's 3 attempts, not 3 x 3 with the SDK's"
    err = _envelope(exc.value.response)
    assert "kaboom inside" in err["message"]
    assert "Traceback" not in exc.value.response.text
    assert exc.value.response.headers["x-flywheel-call-id"].startswith("chatcmpl-")


def test_unknown_path_is_openai_shaped_404(gw: Any) -> None:
    r = httpx.get(gw.v1 + "/assistants")
    assert r.status_code == 404
    _envelope(r)


@pytest.fixture
def keyed(make_gateway: Any, fake_upstream: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["auth"] = {
        "admin_key_env": "TEST_FLYWHEEL_ADMIN",
        "keys": {
            "app": {"hash": "sha256:" + hash_key("fw-app"), "routes": ["bot"]},
            "tiny": {"hash": "sha256:" + hash_key("fw-tiny"), "rpm": 2},
        },
    }
    monkeypatch.setenv("TEST_FLYWHEEL_ADMIN", "fw-admin")
    return make_gateway(cfg)


def test_missing_or_wrong_key_is_401(keyed: Any) -> None:
    r = httpx.post(keyed.v1 + "/chat/completions", json={"model": "bot", "messages": USER})
    assert r.status_code == 401
    assert "didn't provide an API key" in _envelope(r)["message"]
    client = openai.OpenAI(base_url=keyed.v1, api_key="fw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="bot", messages=USER)  # type: ignore[arg-type]
    assert _envelope(exc.value.response)["code"] == "invalid_api_key"


def test_valid_key_works_and_forbidden_route_is_403(keyed: Any) -> None:
    client = openai.OpenAI(base_url=keyed.v1, api_key="fw-app", max_retries=0)
    assert client.chat.completions.create(model="bot", messages=USER).choices  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model="model-b", messages=USER)  # type: ignore[arg-type]
    assert exc.value.status_code == 403
    _envelope(exc.value.response)
    assert [m.id for m in client.models.list()] == ["bot"]


def test_rate_limit_is_429_with_retry_after(keyed: Any) -> None:
    client = openai.OpenAI(base_url=keyed.v1, api_key="fw-tiny", max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="bot", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="bot", messages=USER)  # type: ignore[arg-type]
    assert int(exc.value.response.headers["retry-after"]) >= 1
    assert _envelope(exc.value.response)["code"] == "rate_limit_exceeded"


def test_admin_key_is_accepted_and_required_for_admin(keyed: Any) -> None:
    assert httpx.get(keyed.url + "/admin/routes").status_code == 401
    assert httpx.get(keyed.url + "/healthz").status_code == 200
    client = openai.OpenAI(base_url=keyed.v1, api_key="fw-admin", max_retries=0)
    assert client.chat.completions.create(model="model-b", messages=USER).choices  # type: ignore[arg-type]


def _scripted(make_gateway: Any, fake_upstream: str, tmp_path: Any, attempts: int = 1) -> tuple[Any, str]:
    name = f"m-{uuid.uuid4().hex[:6]}"
    cfg = base_config(fake_upstream, tmp_path)
    cfg["models"]["solo"] = {"provider": "up", "name": name}
    cfg["retries"]["attempts"] = attempts
    return make_gateway(cfg), name


UPSTREAM_HEADERS = {"x-request-id": "req_up_123", "openai-processing-ms": "42",
                    "x-ratelimit-remaining-requests": "99", "x-ratelimit-limit-tokens": "1000"}


def test_upstream_headers_reach_the_client(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> None:
    gw, name = _scripted(make_gateway, fake_upstream, tmp_path)
    script(fake_upstream, name, {"headers": UPSTREAM_HEADERS})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="solo", messages=USER)  # type: ignore[arg-type]
    for header, value in UPSTREAM_HEADERS.items():
        assert raw.headers[header] == value
    assert raw.parse()._request_id == "req_up_123"
    script(fake_upstream, name, {"headers": UPSTREAM_HEADERS})
    r = httpx.post(gw.v1 + "/responses", json={"model": "solo", "input": "hi"})
    assert r.headers["x-request-id"] == "req_up_123"


def test_upstream_4xx_keeps_code_param_and_type(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> None:
    gw, name = _scripted(make_gateway, fake_upstream, tmp_path)
    script(fake_upstream, name, {"status": 400, "message": "This model's maximum context length is 8192 tokens.",
                                 "type": "invalid_request_error", "code": "context_length_exceeded",
                                 "param": "messages", "headers": {"x-request-id": "req_rejected"}})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="solo", messages=USER)  # type: ignore[arg-type]
    err = _envelope(exc.value.response)
    assert (err["code"], err["param"], err["type"]) == ("context_length_exceeded", "messages",
                                                         "invalid_request_error")
    assert exc.value.request_id == "req_rejected"
    assert "x-should-retry" not in exc.value.response.headers  # one attempt: nothing was retried


def test_upstream_429_forwards_retry_after_and_budgets(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> None:
    gw, name = _scripted(make_gateway, fake_upstream, tmp_path)
    script(fake_upstream, name, {"status": 429, "retry_after": "2", "code": "rate_limit_exceeded",
                                 "type": "requests", "headers": {"retry-after-ms": "1500", **UPSTREAM_HEADERS}})
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "solo", "messages": USER})
    assert r.status_code == 429
    assert (_envelope(r)["type"], _envelope(r)["code"]) == ("requests", "rate_limit_exceeded")
    assert r.headers["retry-after"] == "2" and r.headers["retry-after-ms"] == "1500"
    assert r.headers["x-ratelimit-remaining-requests"] == "99" and r.headers["x-request-id"] == "req_up_123"


def test_retried_429_says_do_not_retry(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> None:
    gw, name = _scripted(make_gateway, fake_upstream, tmp_path, attempts=3)
    script(fake_upstream, name, *[{"status": 429}] * 3)
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=2)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="solo", messages=USER)  # type: ignore[arg-type]
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert len(received(fake_upstream, name)) == 3


@pytest.mark.parametrize(("messages", "param", "code"), [
    ([], "messages", "empty_array"),
    ([{"role": ["user"], "content": "x"}], "messages[0].role", None),
    ([{"role": {"x": 1}, "content": "x"}], "messages[0].role", None),
    ([{"role": 5, "content": "x"}], "messages[0].role", None),
])
def test_conformance_of_message_errors(gw: Any, messages: list[Any], param: str, code: str | None) -> None:
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "bot", "messages": messages})
    assert r.status_code == 400
    err = _envelope(r)
    assert err["param"] == param and err["code"] == code


def test_function_role_with_null_content_is_accepted(gw: Any) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "function", "name": "f", "content": None},
                {"role": "user", "content": "again"}]
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "bot", "messages": messages})
    assert r.status_code == 200, r.text


def test_wrong_method_is_405_with_allow(gw: Any) -> None:
    r = httpx.get(gw.v1 + "/chat/completions")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    _envelope(r)
