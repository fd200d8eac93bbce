"""The Responses API through the gateway with the official openai SDK, in front of a chat-only fake
upstream: plain, streamed, tools with a function-call round trip, json_schema, previous_response_id
over three turns, retrieve, delete and input items; answers validated against OpenAI's OpenAPI cut.
Responses calls are chat calls underneath: captured, routed and open to feedback the same way."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import base_config, fetch_call, poll_store, received
from tests.openapi import RESPONSES, validate

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    return make_gateway(base_config(fake_upstream, tmp_path))


@pytest.fixture
def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="anything", max_retries=0)


def test_plain_response_is_a_captured_chat_call_open_to_feedback(client: openai.OpenAI, gw: Any,
                                                                 fake_upstream: str) -> None:
    raw = client.responses.with_raw_response.create(model="bot", input="hello there", instructions="Be brief.",
                                                    max_output_tokens=50, temperature=0.2, metadata={"k": "v"})
    response = raw.parse()
    assert response.output_text == "You said: hello there"
    assert response.id == raw.headers["x-flywheel-call-id"] and response.status == "completed"
    assert raw.headers["x-flywheel-route"] == "bot"
    assert response.usage is not None and response.usage.total_tokens > 0
    assert response.metadata == {"k": "v"}
    validate("Response", raw.http_response.json(), RESPONSES)
    sent = received(fake_upstream, "a")[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.2 and "metadata" not in sent
    call = fetch_call(gw, response.id)
    assert call.endpoint == "chat" and call.route == "bot" and call.prompt_tokens
    fb = httpx.post(gw.v1 + "/feedback", json={"call_id": response.id, "rating": 1})
    assert fb.status_code == 201


def test_streamed_response_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="bot", input="stream me please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_item.added" in kinds and "response.content_part.added" in kinds
    assert "response.output_text.done" in kinds and "response.output_item.done" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == "You said: stream me please"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and final.usage is not None and final.usage.output_tokens > 0
    validate("Response", final.model_dump(mode="json", exclude_unset=True), RESPONSES)
    for e in events:
        validate("ResponseStreamEvent", e.model_dump(mode="json", exclude_unset=True), RESPONSES)


def test_stream_helper_assembles_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model="bot", input="helper") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "You said: helper"


def test_function_call_round_trip(client: openai.OpenAI, fake_upstream: str) -> None:
    first = client.responses.create(model="bot", input="weather in Paris?", tools=[WEATHER])  # type: ignore[list-item]
    validate("Response", first.model_dump(mode="json", exclude_unset=True), RESPONSES)  # tools echoed with `strict`
    assert first.tools[0].strict is False  # type: ignore[union-attr]
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].arguments == '{"city":"example"}'
    items: list[Any] = [{"role": "user", "content": "weather in Paris?"}, calls[0].model_dump(exclude_none=True),
                        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"}]
    second = client.responses.create(model="bot", input=items, tools=[WEATHER])  # type: ignore[list-item]
    assert second.output_text == "The tool returned: sunny, 21C"
    sent = received(fake_upstream, "a")[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == calls[0].call_id
    assert sent[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny, 21C"}


def test_streamed_function_call_arguments(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="bot", input="weather?", tools=[WEATHER],  # type: ignore[list-item]
                                          tool_choice={"type": "function", "name": "get_weather"}, stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")  # type: ignore[union-attr]
    assert args == '{"city":"example"}'
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and done[0].arguments == args  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output[0].type == "function_call" and final.output[0].name == "get_weather"


class City(BaseModel):
    name: str
    population: int


def test_json_schema_text_format_parses(client: openai.OpenAI, fake_upstream: str) -> None:
    parsed = client.responses.parse(model="bot", input="Describe Paris", text_format=City)
    assert isinstance(parsed.output_parsed, City)
    fmt = received(fake_upstream, "a")[-1]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    obj = client.responses.create(model="bot", input="json please", text={"format": {"type": "json_object"}})
    assert obj.output_text == '{"answer":"You said: json please"}'


def test_previous_response_id_over_three_turns(client: openai.OpenAI, fake_upstream: str, gw: Any) -> None:
    one = client.responses.create(model="bot", input="my name is Ada", instructions="first instructions")
    two = client.responses.create(model="bot", input="what is my name?", previous_response_id=one.id)
    three = client.responses.create(model="bot", input="and again?", previous_response_id=two.id)
    assert three.previous_response_id == two.id
    sent = received(fake_upstream, "a")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in sent] == ["my name is Ada", one.output_text, "what is my name?",
                                            two.output_text, "and again?"]
    raw = httpx.get(f"{gw.v1}/responses/{two.id}")
    validate("Response", raw.json(), RESPONSES)
    assert client.responses.retrieve(two.id).output_text == two.output_text
    items = client.responses.input_items.list(three.id)
    assert [i.content[0].text for i in items.data] == ["and again?"]  # type: ignore[union-attr]
    validate("ResponseItemList", httpx.get(f"{gw.v1}/responses/{three.id}/input_items").json(), RESPONSES)


def test_state_survives_a_restart_through_the_store(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> None:
    cfg = base_config(fake_upstream, tmp_path)
    first = make_gateway(cfg)
    one = openai.OpenAI(base_url=first.v1, api_key="x", max_retries=0).responses.create(model="bot", input="remember")
    first.stop()
    second = make_gateway(cfg)
    client = openai.OpenAI(base_url=second.v1, api_key="x", max_retries=0)
    assert client.responses.retrieve(one.id).output_text == "You said: remember"
    two = client.responses.create(model="bot", input="more", previous_response_id=one.id)
    assert two.output_text == "You said: more"


def test_delete_and_store_false(client: openai.OpenAI) -> None:
    kept = client.responses.create(model="bot", input="to delete")
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    unstored = client.responses.create(model="bot", input="ephemeral", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="bot", input="x", previous_response_id=unstored.id)
    assert exc.value.param == "previous_response_id"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "bot", "input": 5}, "input"),
    ({"model": "bot", "input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
    ({"model": "bot", "input": [{"type": "web_search_call"}]}, "input[0].type"),
    ({"model": "bot", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"model": "bot", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_bad_requests_are_400_naming_the_field(gw: Any, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gw.v1 + "/responses", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_another_keys_response_is_not_found(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> None:
    from gateway.http.auth import hash_key

    cfg = base_config(fake_upstream, tmp_path)
    cfg["auth"] = {"admin_key_env": None, "keys": {"a": {"hash": "sha256:" + hash_key("fw-a")},
                                                   "b": {"hash": "sha256:" + hash_key("fw-b")}}}
    gw = make_gateway(cfg)
    mine = openai.OpenAI(base_url=gw.v1, api_key="fw-a", max_retries=0).responses.create(model="bot", input="x")
    other = openai.OpenAI(base_url=gw.v1, api_key="fw-b", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)


def _stored(gw: Any, response_id: str, timeout: float = 10.0) -> Any:
    return poll_store(gw, lambda store: store.get_response(response_id), f"response {response_id}", timeout)


def test_stored_state_is_scrubbed_but_the_live_conversation_is_not(client: openai.OpenAI, gw: Any,
                                                                    fake_upstream: str) -> None:
    one = client.responses.create(model="bot", input="mail me at jane.doe@example.com")
    stored = _stored(gw, one.id)
    assert "jane.doe@example.com" not in str(stored.context) and "jane.doe@example.com" not in str(stored.response)
    client.responses.create(model="bot", input="thanks", previous_response_id=one.id)
    assert received(fake_upstream, "a")[-1]["messages"][0]["content"] == "mail me at jane.doe@example.com"


def test_a_stream_broken_midway_ends_with_an_error_event(make_gateway: Any, fake_upstream: str,
                                                         tmp_path: Any) -> None:
    import uuid

    from tests.conftest import script

    name = f"brk-{uuid.uuid4().hex[:6]}"
    cfg = base_config(fake_upstream, tmp_path)
    cfg["models"]["brittle"] = {"provider": "up", "name": name}
    gw = make_gateway(cfg)
    script(fake_upstream, name, {"break_after": 3})
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0)
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        for event in client.responses.create(model="brittle", input="a long answer please", stream=True):
            seen.append(event.type)
    assert seen[0] == "response.created" and "response.completed" not in seen
    with pytest.raises(openai.NotFoundError):  # a failed response is not kept to continue from
        client.responses.retrieve(fetch_call_id(gw, name))


def fetch_call_id(gw: Any, upstream_model: str) -> str:
    import asyncio

    from gateway.store import open_store

    async def newest() -> str:
        store = open_store(gw.gateway.settings.store.url)
        try:
            for _ in range(500):
                calls = await store.list_calls(route="brittle")
                if calls:
                    return str(calls[-1].id)
                await asyncio.sleep(0.02)
            raise AssertionError("the broken call was never written")
        finally:
            await store.close()

    return asyncio.run(newest())


def test_wrong_method_on_a_response_lists_get_and_delete(gw: Any) -> None:
    r = httpx.put(gw.v1 + "/responses/resp-x")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) >= {"GET", "DELETE"}
