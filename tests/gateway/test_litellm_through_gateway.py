"""The whole path for a non-OpenAI provider: the official openai SDK -> gateway -> litellm ->
Anthropic's Messages API (mocked with respx, no network) -> back as OpenAI chunks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import respx

from tests.conftest import base_config, fetch_call
from tests.providers.test_litellm_provider import ANTHROPIC, KEY, MODEL, STREAM_EVENTS, WEATHER_TOOL, sse


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    cfg = base_config(fake_upstream, tmp_path)
    cfg["providers"]["anthropic"] = {"kind": "litellm", "api_key_env": "TEST_ANTHROPIC_KEY"}
    cfg["models"]["claude"] = {"provider": "anthropic", "name": MODEL,
                               "price": {"input_per_mtok": 0.8, "output_per_mtok": 4.0}}
    return make_gateway(cfg)


@pytest.fixture
def anthropic_mock() -> Iterator[respx.MockRouter]:
    # Only Anthropic is mocked; the SDK's own calls to the gateway on loopback pass through.
    with respx.mock(assert_all_mocked=False, assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        yield router


def test_streamed_tool_call_from_anthropic_reaches_the_sdk(gw: Any, anthropic_mock: respx.MockRouter) -> None:
    route = anthropic_mock.post(ANTHROPIC).mock(return_value=httpx.Response(
        200, content=sse(STREAM_EVENTS), headers={"content-type": "text/event-stream"}))
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="claude", messages=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True})  # type: ignore[list-item]
    text, args, name, usage, call_id = "", "", "", None, None
    for chunk in stream:
        call_id = chunk.id
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                name += (tc.function.name or "") if tc.function else ""
                args += (tc.function.arguments or "") if tc.function else ""
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == KEY
    body = httpx.Response(200, content=sent.content).json()
    assert body["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    assert text == "Checking" and name == "get_weather"
    assert httpx.Response(200, content=args).json() == {"city": "Paris", "days": [1, 2]}
    assert usage is not None and usage.prompt_tokens == 20
    rec = fetch_call(gw, call_id)
    assert rec.model == "claude" and rec.cost_usd is not None and rec.cost_usd > 0
    assert KEY not in str(rec.request) and KEY not in str(rec.response)
