"""LiteLLMProvider against a respx-mocked Anthropic Messages API (and Cohere for embeddings): no network."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from gateway.providers.base import UpstreamCall, UpstreamError
from gateway.providers.litellm_provider import LiteLLMProvider
from tests.openapi import validate

ANTHROPIC = "https://api.anthropic.com/v1/messages"
MODEL = "anthropic/claude-3-5-haiku-20241022"
KEY = "sk-ant-test-0123456789"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_USE_RESPONSE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
    "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 7},
}
STREAM_EVENTS: list[dict[str, Any]] = [
    {"type": "message_start", "message": {
        "id": "msg_02", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": 'ris", "days": [1, 2]}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
]


def sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}], **extra}


@pytest.fixture
def provider() -> LiteLLMProvider:
    return LiteLLMProvider("anthropic", api_key=KEY, base_url=None)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


def call(body: dict[str, Any]) -> UpstreamCall:
    return UpstreamCall(body=body, timeout_s=5.0)


async def test_request_is_translated_to_anthropic_messages(provider: LiteLLMProvider,
                                                           mock: respx.MockRouter) -> None:
    route = mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, json=TOOL_USE_RESPONSE))
    body = {
        "model": MODEL, "max_tokens": 256, "temperature": 0.2, "stop": ["END"], "user": "u-42", "n": 1,
        "tools": [WEATHER_TOOL], "tool_choice": "required", "top_k": 5,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_00", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_00", "content": "18C, sunny"},
        ],
    }
    await provider.chat(call(body))

    request = route.calls.last.request
    assert request.headers["x-api-key"] == KEY
    assert "anthropic-version" in request.headers
    sent = json.loads(request.content)
    assert sent["model"] == "claude-3-5-haiku-20241022"
    assert sent["system"] in ("You are terse.", [{"type": "text", "text": "You are terse."}])
    assert all(m["role"] != "system" for m in sent["messages"])
    assert sent["max_tokens"] == 256 and sent["temperature"] == 0.2 and sent["stop_sequences"] == ["END"]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["description"] == "Current weather for a city"
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]  # type: ignore[index]
    assert sent["tool_choice"]["type"] == "any"
    assert sent["metadata"] == {"user_id": "u-42"}
    assert sent["top_k"] == 5  # a field OpenAI does not define reaches the provider
    assistant, tool_result = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    assert [b["type"] for b in assistant["content"]] == ["tool_use"]
    assert assistant["content"][0]["input"] == {"city": "Paris"}
    assert tool_result["role"] == "user" and tool_result["content"][0]["type"] == "tool_result"
    assert tool_result["content"][0]["tool_use_id"] == "toolu_00"


async def test_max_tokens_is_always_sent(provider: LiteLLMProvider, mock: respx.MockRouter) -> None:
    route = mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, json=TOOL_USE_RESPONSE))
    await provider.chat(call(chat_body()))
    sent = json.loads(route.calls.last.request.content)
    assert isinstance(sent["max_tokens"], int) and sent["max_tokens"] > 0


async def test_tool_use_response_comes_back_openai_shaped(provider: LiteLLMProvider,
                                                          mock: respx.MockRouter) -> None:
    headers = {"request-id": "req_9", "anthropic-ratelimit-requests-remaining": "49"}
    mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, json=TOOL_USE_RESPONSE, headers=headers))
    response = await provider.chat(call(chat_body(tools=[WEATHER_TOOL])))

    body = response.body
    validate("CreateChatCompletionResponse", body)
    orjson.dumps(body)  # JSON-serialisable as is
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    (tool_call,) = choice["message"]["tool_calls"]
    assert tool_call["id"] == "toolu_01" and tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "get_weather"
    assert json.loads(tool_call["function"]["arguments"]) == {"city": "Paris"}
    assert body["usage"]["prompt_tokens"] == 12
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == 19
    assert "provider_specific_fields" not in json.dumps(body) and "_hidden_params" not in body
    assert response.headers["request-id"] == "req_9"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "49"


async def test_streamed_tool_use_becomes_openai_chunks(provider: LiteLLMProvider,
                                                       mock: respx.MockRouter) -> None:
    route = mock.post(ANTHROPIC).mock(return_value=httpx.Response(
        200, content=sse(STREAM_EVENTS), headers={"content-type": "text/event-stream"}))
    body = chat_body(tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True})
    chunks = [c async for group in provider.chat_stream(call(body)) for c in group]

    assert json.loads(route.calls.last.request.content)["stream"] is True
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
        orjson.dumps(chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Checking"
    deltas = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    first = deltas[0]
    assert first["id"] == "toolu_02" and first["function"]["name"] == "get_weather"
    assert {d["index"] for d in deltas} == {first["index"]}
    arguments = "".join(d.get("function", {}).get("arguments", "") for d in deltas)
    assert json.loads(arguments) == {"city": "Paris", "days": [1, 2]}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 20 and last["usage"]["completion_tokens"] == 15
    assert all("usage" not in c for c in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage(provider: LiteLLMProvider,
                                                         mock: respx.MockRouter) -> None:
    mock.post(ANTHROPIC).mock(return_value=httpx.Response(
        200, content=sse(STREAM_EVENTS), headers={"content-type": "text/event-stream"}))
    chunks = [c async for group in provider.chat_stream(call(chat_body(stream=True))) for c in group]
    assert chunks and all("usage" not in c for c in chunks)


def anthropic_error(status: int, kind: str, message: str,
                    headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"type": "error", "error": {"type": kind, "message": message}},
                          headers=headers)


ERRORS = [
    (anthropic_error(429, "rate_limit_error", "Too many requests", {"retry-after": "7"}), 429, 7.0, True),
    (anthropic_error(529, "overloaded_error", "Overloaded"), 529, None, True),
    (anthropic_error(500, "api_error", "Internal server error"), 500, None, True),
    (anthropic_error(400, "invalid_request_error", "max_tokens: too large"), 400, None, False),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("reply", "status", "retry_after", "retryable"), ERRORS,
                         ids=[str(e[1]) for e in ERRORS])
async def test_http_errors_map_to_upstream_error(provider: LiteLLMProvider, mock: respx.MockRouter,
                                                 reply: httpx.Response, status: int,
                                                 retry_after: float | None, retryable: bool,
                                                 stream: bool) -> None:
    route = mock.post(ANTHROPIC).mock(return_value=reply)
    with pytest.raises(UpstreamError) as caught:
        if stream:
            async for _ in provider.chat_stream(call(chat_body(stream=True))):
                pass
        else:
            await provider.chat(call(chat_body()))
    error = caught.value
    assert error.status == status
    assert error.retry_after == retry_after
    assert error.retryable is retryable and error.timeout is False
    assert error.message == reply.json()["error"]["message"]
    assert route.call_count == 1  # litellm does not retry: the pipeline does


async def test_unparseable_success_is_a_server_error(provider: LiteLLMProvider,
                                                     mock: respx.MockRouter) -> None:
    mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, text="<html>proxy error</html>"))
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(call(chat_body()))
    assert caught.value.status is not None and caught.value.status >= 500 and caught.value.retryable


@pytest.mark.parametrize(("headers", "low", "high"), [
    ({"retry-after": "2", "retry-after-ms": "1500"}, 1.5, 1.5),
    ({"retry-after": "<http-date in 60 s>"}, 30.0, 60.0),
    ({"retry-after": "soon"}, None, None),
], ids=["ms-wins", "http-date", "garbage"])
async def test_retry_after_forms(provider: LiteLLMProvider, mock: respx.MockRouter, headers: dict[str, str],
                                 low: float | None, high: float | None) -> None:
    if headers.get("retry-after") == "<http-date in 60 s>":  # made here: collection may be long before
        headers = {"retry-after": formatdate(time.time() + 60, usegmt=True)}
    mock.post(ANTHROPIC).mock(return_value=anthropic_error(429, "rate_limit_error", "slow down", headers))
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(call(chat_body()))
    if low is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after is not None and low <= caught.value.retry_after <= (high or low)


async def test_connect_error_has_no_status(provider: LiteLLMProvider, mock: respx.MockRouter) -> None:
    mock.post(ANTHROPIC).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(call(chat_body()))
    assert caught.value.status is None and caught.value.timeout is False and caught.value.retryable


async def test_timeout_is_flagged(provider: LiteLLMProvider, mock: respx.MockRouter) -> None:
    mock.post(ANTHROPIC).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(call(chat_body()))
    assert caught.value.timeout is True and caught.value.status is None


async def test_mid_stream_error_event_raises(provider: LiteLLMProvider, mock: respx.MockRouter) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    events = [*STREAM_EVENTS[:3], error]
    mock.post(ANTHROPIC).mock(return_value=httpx.Response(
        200, content=sse(events), headers={"content-type": "text/event-stream"}))
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as caught:
        async for group in provider.chat_stream(call(chat_body(stream=True))):
            got.extend(group)
    assert got, "the error came after the first chunk"
    assert caught.value.retryable


async def test_stream_closed_early_releases_the_upstream(provider: LiteLLMProvider,
                                                         mock: respx.MockRouter) -> None:
    mock.post(ANTHROPIC).mock(return_value=httpx.Response(
        200, content=sse(STREAM_EVENTS), headers={"content-type": "text/event-stream"}))
    chunks = provider.chat_stream(call(chat_body(stream=True)))
    first = await anext(chunks)
    assert first[0]["choices"][0]["delta"]["content"] == "Checking"
    await chunks.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("field", ["api_base", "base_url", "mock_response", "aws_sts_endpoint",
                                   "vertex_credentials", "litellm_metadata", "_skip_mcp_handler"])
async def test_fields_litellm_would_obey_are_refused(provider: LiteLLMProvider, mock: respx.MockRouter,
                                                    field: str) -> None:
    route = mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, json=TOOL_USE_RESPONSE))
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(call(chat_body(**{field: "http://attacker.example"})))
    assert caught.value.status == 400 and field in caught.value.message
    assert caught.value.body is not None and caught.value.body["error"]["param"] == field
    assert route.call_count == 0


async def test_unsupported_openai_parameter_is_a_400(provider: LiteLLMProvider,
                                                     mock: respx.MockRouter) -> None:
    route = mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, json=TOOL_USE_RESPONSE))
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(call(chat_body(n=3)))
    assert caught.value.status == 400 and not caught.value.retryable
    assert "n" in caught.value.message and "litellm." not in caught.value.message
    assert route.call_count == 0


async def test_drop_params_extra_drops_them(mock: respx.MockRouter) -> None:
    lenient = LiteLLMProvider("anthropic", api_key=KEY, base_url=None, extra={"drop_params": True})
    route = mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, json=TOOL_USE_RESPONSE))
    await lenient.chat(call(chat_body(n=3, seed=7)))
    sent = json.loads(route.calls.last.request.content)
    assert "n" not in sent and "seed" not in sent


async def test_base_url_is_honoured(mock: respx.MockRouter) -> None:
    proxied = LiteLLMProvider("anthropic", api_key=KEY, base_url="http://127.0.0.1:9/anthropic")
    route = mock.post("http://127.0.0.1:9/anthropic/v1/messages").mock(
        return_value=httpx.Response(200, json=TOOL_USE_RESPONSE))
    await proxied.chat(call(chat_body()))
    assert route.call_count == 1


@pytest.mark.parametrize("key", [KEY, "opaque-credential-4242"])  # litellm itself masks only sk-… keys
async def test_api_key_is_not_exposed(mock: respx.MockRouter, key: str) -> None:
    provider = LiteLLMProvider("anthropic", api_key=key, base_url=None)
    mock.post(ANTHROPIC).mock(return_value=anthropic_error(401, "authentication_error", f"invalid key {key}"))
    with pytest.raises(UpstreamError) as caught:
        await provider.chat(call(chat_body()))
    assert caught.value.status == 401 and caught.value.message.startswith("invalid key")
    assert key not in str(caught.value) and key not in json.dumps(caught.value.body)
    assert key not in repr(provider) and key not in repr(vars(provider))


async def test_gemini_tool_call_comes_back_openai_shaped(mock: respx.MockRouter) -> None:
    gemini = LiteLLMProvider("gemini", api_key="g-test", base_url=None)
    route = mock.post(url__regex=r"^https://generativelanguage\.googleapis\.com/.*:generateContent").mock(
        return_value=httpx.Response(200, json={
            "candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}}))
    response = await gemini.chat(call(chat_body(model="gemini/gemini-2.0-flash", tools=[WEATHER_TOOL])))
    sent = json.loads(route.calls.last.request.content)
    assert sent["tools"][0]["function_declarations"][0]["name"] == "get_weather"
    validate("CreateChatCompletionResponse", response.body)
    choice = response.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert response.body["usage"]["total_tokens"] == 13


COHERE_EMBED = "https://api.cohere.ai/v2/embed"
VECTORS = [[0.25, -1.5, 3.0], [0.0, 0.5, -0.125]]


def cohere_reply(request: httpx.Request) -> httpx.Response:
    sent = json.loads(request.content)
    assert sent["texts"] == ["a", "b"]
    return httpx.Response(200, json={
        "id": "e1", "embeddings": {"float": VECTORS}, "texts": sent["texts"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4}}})


async def test_embeddings_as_floats(mock: respx.MockRouter) -> None:
    cohere = LiteLLMProvider("cohere", api_key="co-test", base_url=None)
    route = mock.post(COHERE_EMBED).mock(side_effect=cohere_reply)
    response = await cohere.embeddings(call({"model": "cohere/embed-english-v3.0", "input": ["a", "b"]}))
    assert route.calls.last.request.headers["authorization"] == "Bearer co-test"
    validate("CreateEmbeddingResponse", response.body)
    assert [d["embedding"] for d in response.body["data"]] == VECTORS
    assert [d["index"] for d in response.body["data"]] == [0, 1]
    assert response.body["usage"]["prompt_tokens"] == 4


async def test_embeddings_as_base64_little_endian_float32(mock: respx.MockRouter) -> None:
    cohere = LiteLLMProvider("cohere", api_key="co-test", base_url=None)
    route = mock.post(COHERE_EMBED).mock(side_effect=cohere_reply)
    body = {"model": "cohere/embed-english-v3.0", "input": ["a", "b"], "encoding_format": "base64"}
    response = await cohere.embeddings(call(body))
    assert "encoding_format" not in json.loads(route.calls.last.request.content)
    assert [d["object"] for d in response.body["data"]] == ["embedding", "embedding"]
    for item, vector in zip(response.body["data"], VECTORS, strict=True):
        raw = base64.b64decode(item["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == vector


async def test_aclose_releases_clients_and_later_calls_still_work(provider: LiteLLMProvider,
                                                                  mock: respx.MockRouter) -> None:
    import litellm

    def loop_clients() -> list[Any]:
        suffix = f"-{id(asyncio.get_running_loop())}"
        cache = litellm.in_memory_llm_clients_cache.cache_dict
        return [client for key, client in cache.items() if str(key).endswith(suffix)]

    route = mock.post(ANTHROPIC).mock(return_value=httpx.Response(200, json=TOOL_USE_RESPONSE))
    await provider.chat(call(chat_body()))
    opened = loop_clients()
    assert opened
    await provider.aclose()
    assert loop_clients() == []
    assert all(client._client.is_closed for client in opened if hasattr(client, "_client"))
    await provider.aclose()  # idempotent
    await provider.chat(call(chat_body()))
    assert route.call_count == 2


def test_module_import_does_not_import_litellm() -> None:
    code = "import sys, gateway.providers.litellm_provider; sys.exit('litellm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], check=False)
    assert done.returncode == 0
