"""The official openai SDK, sync and async, against the gateway in front of a real fake upstream:
the SDK must not notice it is not talking to OpenAI. Responses are validated against OpenAI's
published OpenAPI schema."""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import base_config, received
from tests.openapi import validate

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    return make_gateway(base_config(fake_upstream, tmp_path))


@pytest.fixture
def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="anything", max_retries=0)


@pytest.fixture
def aclient(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key="anything", max_retries=0)


def test_chat_completion_through_a_route(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hello there"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: hello there"
    assert completion.id == raw.headers["x-flywheel-call-id"]
    assert raw.headers["x-flywheel-route"] == "bot"
    assert raw.headers["x-flywheel-variant"] == "model-a"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    validate("CreateChatCompletionResponse", raw.http_response.json())


def test_a_configured_model_passes_straight_through(client: openai.OpenAI, fake_upstream: str) -> None:
    completion = client.chat.completions.create(
        model="model-b", messages=[{"role": "user", "content": "direct"}], extra_body={"my_custom_field": 7}
    )
    assert completion.choices[0].message.content == "You said: direct"
    sent = received(fake_upstream, "b")[-1]
    assert sent["model"] == "b"
    assert sent["my_custom_field"] == 7, "unknown fields reach the provider"


async def test_async_streaming_with_usage(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "stream me please"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, ids = "", None, set()
    async for chunk in stream:
        ids.add(chunk.id)
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "You said: stream me please"
    assert usage is not None and usage.completion_tokens > 0
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")


def test_stream_without_include_usage_carries_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "no usage"}], stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tools_round_trip(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"})
    second = client.chat.completions.create(model="bot", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "The tool returned: sunny, 21C"


def test_streamed_tool_call_deltas_assemble(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True,
    )
    args, name = "", ""
    for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
    assert name == "get_weather"
    assert args == '{"city":"example"}'


def test_json_object_mode(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "json please"}], response_format={"type": "json_object"}
    )
    assert completion.choices[0].message.content == '{"answer":"You said: json please"}'


class Answer(BaseModel):
    city: str
    temperature: float
    sunny: bool


def test_json_schema_structured_output_parses(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="bot", messages=[{"role": "user", "content": "structured"}], response_format=Answer
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Answer)


def test_n_and_logprobs_pass_through(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "two"}], n=2, logprobs=True)
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[0].logprobs is not None and completion.choices[0].logprobs.content
    validate("CreateChatCompletionResponse", raw.http_response.json())


def test_embeddings_float_and_base64(client: openai.OpenAI, gw: Any) -> None:
    floats = client.embeddings.create(model="embed", input=["a", "b"], encoding_format="float")
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 64
    # The SDK asks for base64 by default and decodes it: same vectors either way.
    default = client.embeddings.create(model="embed", input=["a", "b"])
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    validate("CreateEmbeddingResponse", httpx.post(gw.v1 + "/embeddings", json={"model": "embed", "input": "a"}).json())
    # (the official schema types `embedding` as an array only: a known erratum for base64)
    raw = httpx.post(gw.v1 + "/embeddings", json={"model": "embed", "input": "a", "encoding_format": "base64"})
    vec = struct.unpack("<64f", base64.b64decode(raw.json()["data"][0]["embedding"]))
    assert vec == pytest.approx(floats.data[0].embedding, rel=1e-6)


def test_embeddings_accept_token_id_arrays(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embed", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(result.data) == 2


def test_models_list_and_retrieve(client: openai.OpenAI, gw: Any) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["bot", "model-a", "model-b", "embed"]
    assert client.models.retrieve("bot").owned_by == "flywheel"
    validate("ListModelsResponse", httpx.get(gw.v1 + "/models").json())
    validate("Model", httpx.get(gw.v1 + "/models/model-a").json())
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
