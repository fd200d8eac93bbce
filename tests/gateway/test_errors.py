"""Every error a client can meet is OpenAI-shaped, with OpenAI's status code, and maps onto the
SDK's own exception classes."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from gateway.http.auth import hash_key
from tests.conftest import base_config, script
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


def test_upstream_failure_after_retries_and_fallback_is_502_with_upstream_message(
    make_gateway: Any, fake_upstream: str, tmp_path: Any
) -> None:
    name = f"down-{uuid.uuid4().hex[:6]}"
    cfg = base_config(fake_upstream, tmp_path)
    cfg["models"]["down"] = {"provider": "up", "name": name}
    gw = make_gateway(cfg)
    script(fake_upstream, name, *[{"status": 500, "message": "kaboom inside"}] * 3)
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="down", messages=USER)  # type: ignore[arg-type]
    assert exc.value.status_code == 502
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
