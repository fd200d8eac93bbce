"""The Responses API passed through to an upstream that speaks it (`responses = "native"`), with the
official openai SDK: plain, streamed, a tools round trip and previous_response_id over three turns
against the fake upstream's own /v1/responses, answers validated against OpenAI's OpenAPI cut. The
template, retrieved examples, fallbacks and capture apply exactly as on the translated path."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.serve.augment import DEFAULT_RETRIEVAL, LoadedIndex, LoadedTemplate, ServingSet, apply
from gateway.serve.templating import CompiledTemplate, Template
from retrieval.embeddings import HashingEmbedder
from retrieval.examples import Example, ExampleIndex
from tests.conftest import base_config, fetch_call, received, script
from tests.openapi import RESPONSES, validate

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def native_config(upstream: str, tmp: Any) -> dict[str, Any]:
    """`bot`: model-a on a native provider, falling back to model-b on a chat-only one (same fake)."""
    cfg = base_config(upstream, tmp)
    cfg["providers"] = {"up": {"kind": "openai", "base_url": upstream, "responses": "native"},
                        "chat": {"kind": "openai", "base_url": upstream}}
    cfg["models"]["model-a"] = {"provider": "up", "name": "na", "params": {"max_tokens": 64},
                                "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
    cfg["models"]["model-b"] = {"provider": "chat", "name": "cb"}
    cfg["routes"]["native-only"] = {"variants": ["model-a"]}
    cfg["providers"]["sim"] = {"kind": "fake", "responses": "native"}
    cfg["models"]["simulated"] = {"provider": "sim", "name": "sim-1"}
    cfg["retries"]["attempts"] = 1
    cfg["learners"] = {"enabled": False, "embedder": "hashing"}
    return cfg


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    return make_gateway(native_config(fake_upstream, tmp_path))


@pytest.fixture
def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="anything", max_retries=0)


def sent_natively(upstream: str, model: str = "na") -> dict[str, Any]:
    body = received(upstream, model)[-1]
    assert "input" in body and "messages" not in body, "the upstream got a chat request"
    return body


def test_plain_response_is_passed_through_and_captured(client: openai.OpenAI, gw: Any, fake_upstream: str) -> None:
    raw = client.responses.with_raw_response.create(model="bot", input="hello there", instructions="Be brief.",
                                                    metadata={"k": "v"})
    response = raw.parse()
    assert response.output_text == "You said: hello there"
    assert response.id == raw.headers["x-flywheel-call-id"] and response.status == "completed"
    assert response.instructions == "Be brief." and response.metadata == {"k": "v"} and response.store is True
    assert response.output[0].id.startswith("msg_up_")  # the upstream's own items, as they came
    validate("Response", raw.http_response.json(), RESPONSES)
    sent = sent_natively(fake_upstream)
    assert sent["store"] is False and sent["instructions"] == "Be brief." and sent["max_output_tokens"] == 64
    assert sent["input"] == [{"type": "message", "role": "user", "content": "hello there"}]
    call = fetch_call(gw, response.id)
    assert call.variant == "model-a" and call.endpoint == "chat"
    assert call.request["messages"][-1] == {"role": "user", "content": "hello there"}
    assert call.response["choices"][0]["message"]["content"] == "You said: hello there"
    assert call.prompt_tokens and call.completion_tokens and call.cost_usd is not None
    assert httpx.post(gw.v1 + "/feedback", json={"call_id": response.id, "rating": 1}).status_code == 201


def test_streamed_events_are_the_upstreams(client: openai.OpenAI, gw: Any, fake_upstream: str) -> None:
    script(fake_upstream, "na", {"headers": {"x-request-id": "req_native_stream"}})
    raw = client.responses.with_raw_response.create(model="bot", input="stream me please", stream=True)
    assert raw.request_id == "req_native_stream"
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == "You said: stream me please"
    final = events[-1].response  # type: ignore[union-attr]
    call_id = raw.headers["x-flywheel-call-id"]
    assert final.id == call_id and events[0].response.id == call_id  # type: ignore[union-attr]
    assert final.output[0].id.startswith("msg_up_")
    for e in events:
        validate("ResponseStreamEvent", e.model_dump(mode="json", exclude_unset=True), RESPONSES)
    assert sent_natively(fake_upstream)["stream"] is True
    call = fetch_call(gw, call_id)
    assert call.stream and call.response["choices"][0]["message"]["content"] == text
    assert call.completion_tokens and call.ttft_ms is not None


def test_function_call_round_trip(client: openai.OpenAI, fake_upstream: str, gw: Any) -> None:
    raw = client.responses.with_raw_response.create(model="bot", input="weather in Paris?",
                                                    tools=[WEATHER])  # type: ignore[list-item]
    validate("Response", raw.http_response.json(), RESPONSES)
    first = raw.parse()
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].arguments == '{"city":"example"}'
    recorded = fetch_call(gw, first.id).response["choices"][0]
    assert recorded["finish_reason"] == "tool_calls"
    assert recorded["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    items: list[Any] = [{"role": "user", "content": "weather in Paris?"}, calls[0].model_dump(exclude_none=True),
                        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"}]
    second = client.responses.create(model="bot", input=items, tools=[WEATHER])  # type: ignore[list-item]
    assert second.output_text == "The tool returned: sunny, 21C"
    assert sent_natively(fake_upstream)["input"][2]["type"] == "function_call_output"


def test_streamed_function_call(client: openai.OpenAI, gw: Any) -> None:
    with client.responses.stream(model="bot", input="weather?", tools=[WEATHER],  # type: ignore[list-item]
                                 tool_choice={"type": "function", "name": "get_weather"}) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output[0].type == "function_call" and final.output[0].arguments == '{"city":"example"}'
    message = fetch_call(gw, final.id).response["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city":"example"}'


def test_previous_response_id_over_three_turns(client: openai.OpenAI, fake_upstream: str) -> None:
    one = client.responses.create(model="bot", input="my name is Ada")
    two = client.responses.create(model="bot", input="what is my name?", previous_response_id=one.id)
    # the upstream stores nothing and refuses ids it does not know: the state was expanded
    three = client.responses.create(model="bot", input="and again?", previous_response_id=two.id, stream=True)
    final = next(e for e in three if e.type == "response.completed").response  # type: ignore[union-attr]
    assert final.previous_response_id == two.id and final.output_text == "You said: and again?"
    sent = sent_natively(fake_upstream)
    assert "previous_response_id" not in sent and sent["store"] is False
    texts = [i["content"] if isinstance(i["content"], str) else i["content"][0]["text"] for i in sent["input"]]
    assert texts == ["my name is Ada", one.output_text, "what is my name?", two.output_text, "and again?"]
    assert [i["role"] for i in sent["input"]] == ["user", "assistant", "user", "assistant", "user"]
    assert all("id" not in i for i in sent["input"])  # Flywheel's and the upstream's ids stay here
    listed = client.responses.input_items.list(final.id)
    assert [i.type for i in listed.data] == ["message"]


def test_template_and_examples_reach_a_native_upstream(client: openai.OpenAI, gw: Any, fake_upstream: str) -> None:
    embedder = HashingEmbedder()
    index = ExampleIndex.build([Example("e1", "what is the capital of France", "Paris", "c1", "correction", 1.0)],
                               embedder)
    serving = ServingSet(LoadedTemplate("t1", CompiledTemplate(Template("You answer for {{ route }}."))),
                         LoadedIndex("i1", index))

    async def embed(text: str) -> Any:
        return embedder.embed([text])[0]

    class Learned:  # the augmenter's own `apply`, with the embedder at hand (no load to wait for)
        async def augment(self, route: str, messages: list[Any], ctx: Any) -> Any:
            return await apply(route, messages, serving, DEFAULT_RETRIEVAL, embed)

    gw.gateway.pipeline.augmenter = Learned()
    response = client.responses.create(model="bot", input="what is the capital of France?", instructions="Be brief.")
    sent = sent_natively(fake_upstream)
    assert sent["instructions"] == "You answer for bot.\n\nBe brief."
    assert [(i["role"], i["content"]) for i in sent["input"]][-3:-1] == [
        ("user", "what is the capital of France"), ("assistant", "Paris")]
    assert sent["input"][-1]["content"] == "what is the capital of France?"
    assert response.output_text == "Paris"  # the fake imitates the demonstration
    assert response.instructions == "Be brief."  # the learned template is Flywheel's business
    call = fetch_call(gw, response.id)
    assert call.template_version == "t1" and call.retrieved_ids == ["e1"]


def test_a_fallback_to_a_chat_only_provider_translates(client: openai.OpenAI, gw: Any, fake_upstream: str) -> None:
    script(fake_upstream, "na", {"status": 503}, {"status": 503})
    plain = client.responses.with_raw_response.create(model="bot", input="plain")
    assert plain.parse().output_text == "You said: plain" and plain.headers["x-flywheel-variant"] == "model-b"
    validate("Response", plain.http_response.json(), RESPONSES)
    assert received(fake_upstream, "cb")[-1]["messages"][-1] == {"role": "user", "content": "plain"}
    events = list(client.responses.create(model="bot", input="streamed", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "You said: streamed"  # type: ignore[union-attr]


def test_a_native_stream_broken_midway_ends_failed(client: openai.OpenAI, fake_upstream: str, gw: Any) -> None:
    script(fake_upstream, "na", {"break_after": 5})
    with pytest.raises(openai.APIError):
        events = []
        for e in client.responses.create(model="bot", input="one two three four five six", stream=True):
            events.append(e)
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    script(fake_upstream, "na", {"break_after": 5})
    raw = httpx.post(gw.v1 + "/responses", json={"model": "bot", "input": "one two three four five six",
                                                 "stream": True})
    sent = [orjson.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in sent][-2:] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    for e in sent:
        validate("ResponseStreamEvent", e, RESPONSES)
    failed = sent[-1]["response"]
    assert failed["id"] == raw.headers["x-flywheel-call-id"] and failed["status"] == "failed"
    assert fetch_call(gw, failed["id"]).status == 502
    with pytest.raises(openai.NotFoundError):  # a failed response is not kept to continue from
        openai.OpenAI(base_url=gw.v1, api_key="x").responses.retrieve(failed["id"])


def test_upstream_rejection_before_a_native_stream_keeps_its_fields(client: openai.OpenAI, fake_upstream: str) -> None:
    script(fake_upstream, "na", {"status": 400, "message": "Input too long.", "type": "invalid_request_error",
                                 "code": "context_length_exceeded", "param": "input",
                                 "headers": {"x-request-id": "req_too_long"}})
    with pytest.raises(openai.BadRequestError) as exc:
        list(client.responses.create(model="bot", input="long", stream=True))
    err = exc.value.body
    assert isinstance(err, dict)
    assert (err["code"], err["param"], err["type"]) == ("context_length_exceeded", "input", "invalid_request_error")
    assert exc.value.request_id == "req_too_long"


def test_built_in_tools_reach_a_route_whose_upstreams_are_all_native(gw: Any, fake_upstream: str) -> None:
    body = {"input": "news today?", "tools": [{"type": "web_search"}, WEATHER],
            "include": ["reasoning.encrypted_content"]}
    r = httpx.post(gw.v1 + "/responses", json={"model": "native-only", **body})
    assert r.status_code == 200, r.text
    sent = sent_natively(fake_upstream)
    assert sent["tools"][0] == {"type": "web_search"} and sent["include"] == ["reasoning.encrypted_content"]
    refused = httpx.post(gw.v1 + "/responses", json={"model": "bot", **body})  # it may fall back to chat
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools[0]"


def test_the_in_process_fake_speaks_responses_too(client: openai.OpenAI) -> None:
    response = client.responses.create(model="simulated", input="hi")
    assert response.output_text == "You said: hi" and response.output[0].id.startswith("msg_up_")
    events = list(client.responses.create(model="simulated", input="hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output[0].id.startswith("msg_up_")  # type: ignore[union-attr]
