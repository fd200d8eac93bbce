"""Legacy POST /v1/completions through the gateway with the official openai SDK, translated to chat
for a chat-only fake upstream; answers validated against OpenAI's OpenAPI cut."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import base_config, fetch_call, received
from tests.openapi import RESPONSES, validate


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    return make_gateway(base_config(fake_upstream, tmp_path))


@pytest.fixture
def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="anything", max_retries=0)


def test_plain_completion(client: openai.OpenAI, gw: Any, fake_upstream: str) -> None:
    raw = client.completions.with_raw_response.create(model="bot", prompt="hello there", max_tokens=20, stop=["\n"])
    completion = raw.parse()
    assert completion.choices[0].text == "You said: hello there"
    assert completion.id == raw.headers["x-flywheel-call-id"] and completion.id.startswith("cmpl-")
    assert completion.object == "text_completion" and completion.usage is not None
    validate("CreateCompletionResponse", raw.http_response.json(), RESPONSES)
    sent = received(fake_upstream, "a")[-1]
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["max_tokens"] == 20 and sent["stop"] == ["\n"]
    assert fetch_call(gw, completion.id).route == "bot"


def test_echo_and_logprobs(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="bot", prompt="hi", echo=True, logprobs=2)
    choice = completion.choices[0]
    assert choice.text == "hiYou said: hi"
    assert choice.logprobs is not None and choice.logprobs.tokens == ["You", "said:", "hi"]


def test_streamed_completion(client: openai.OpenAI, gw: Any) -> None:
    chunks = list(client.completions.create(model="bot", prompt="stream me", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "You said: stream me"
    assert {c.object for c in chunks} == {"text_completion"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # OpenAI's own stream chunks carry finish_reason null until the last one, which the schema (written
    # for the whole object) does not allow: the chunks that end a choice, and the usage chunk, are checked
    ended = [c for c in chunks if not c.choices or c.choices[0].finish_reason]
    assert len(ended) == 2
    for c in ended:
        validate("CreateCompletionResponse", c.model_dump(mode="json", exclude_unset=True), RESPONSES)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "bot", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "bot", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "bot", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "bot", "prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x"}, "model"),
])
def test_untranslatable_requests_are_400_naming_the_field(gw: Any, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gw.v1 + "/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
