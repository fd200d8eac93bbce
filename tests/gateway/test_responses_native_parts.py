"""The pieces of the native Responses path without a server: the upstream request rebuilt from what
the pipeline would send, and the upstream's answer read back as the chat completion that is logged."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.settings import ConfigError, parse_settings
from gateway.serve import responses_api as ra
from gateway.serve.responses_native import NativeResponses, chat_answer

HISTORY: list[dict[str, Any]] = [
    {"type": "message", "id": "in_1", "role": "user", "content": "hi"},
    {"type": "reasoning", "id": "rs_1", "summary": []},  # a reference only the upstream that made it knows
    {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "opaque"},
    {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
     "content": [{"type": "output_text", "text": "hello", "annotations": []}]},
]


def native(body: dict[str, Any]) -> tuple[NativeResponses, dict[str, Any]]:
    req = ra.parse_request(body)
    chat = ra.to_chat(req, HISTORY)
    return NativeResponses(req, HISTORY, chat, "resp-1"), chat


def test_the_upstream_request_carries_state_template_examples_and_target_params() -> None:
    n, chat = native({"model": "bot", "input": "and now?", "instructions": "Be kind.", "previous_response_id": "r0",
                      "metadata": {"a": "b"}, "temperature": 0.3})
    template = {"role": "system", "content": "Learned rules."}
    shots = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    own = chat["messages"]
    sent = {"max_tokens": 99, "reasoning_effort": "low", "n": 2, **chat, "model": "gpt-up",
            "temperature": 0.3, "messages": [template, *own[:-1], *shots, own[-1]]}
    body = n.upstream_body(sent, stream=False)
    assert body["model"] == "gpt-up" and body["store"] is False and "previous_response_id" not in body
    assert body["instructions"] == "Learned rules.\n\nBe kind."
    assert body["max_output_tokens"] == 99 and body["reasoning"] == {"effort": "low"} and "n" not in body
    assert body["temperature"] == 0.3 and body["metadata"] == {"a": "b"} and "stream" not in body
    assert body["input"] == [
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "opaque"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello",
                                                              "annotations": []}]},
        {"type": "message", "role": "user", "content": "q"},
        {"type": "message", "role": "assistant", "content": "a"},
        {"type": "message", "role": "user", "content": "and now?"},
    ]
    assert n.upstream_body({**chat, "model": "m"}, stream=True)["stream"] is True


def test_the_answer_is_logged_as_a_chat_completion() -> None:
    response = {"id": "resp_up", "object": "response", "created_at": 5, "model": "m", "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "output": [{"type": "reasoning", "id": "rs", "summary": []},
                           {"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": "par"}, {"type": "output_text", "text": "t"}]}],
                "usage": {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14,
                          "input_tokens_details": {"cached_tokens": 3},
                          "output_tokens_details": {"reasoning_tokens": 2}}}
    chat = chat_answer(response)
    choice = chat["choices"][0]
    assert choice["message"]["content"] == "part" and choice["finish_reason"] == "length"
    assert chat["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                             "prompt_tokens_details": {"cached_tokens": 3},
                             "completion_tokens_details": {"reasoning_tokens": 2}}
    calls = chat_answer({"output": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}],
                         "status": "completed"})["choices"][0]
    assert calls["finish_reason"] == "tool_calls" and calls["message"]["content"] is None
    assert calls["message"]["tool_calls"] == [{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]


def test_the_client_sees_flywheels_id_state_and_its_own_instructions() -> None:
    n, _ = native({"model": "bot", "input": "x", "instructions": "Mine.", "previous_response_id": "resp-0",
                   "store": True})
    view = n.client_view({"id": "resp_up", "instructions": "Learned rules.\n\nMine.", "store": False, "output": []})
    assert (view["id"], view["previous_response_id"], view["store"], view["instructions"]) == (
        "resp-1", "resp-0", True, "Mine.")


@pytest.mark.parametrize(("provider", "problem"), [
    ({"kind": "openai", "base_url": "http://x", "responses": "passthrough"}, "providers.p.responses"),
    ({"kind": "litellm", "responses": "native"}, "providers.p.responses"),  # litellm always translates
])
def test_the_responses_mode_is_checked(provider: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings({"providers": {"p": provider}, "models": {"m": {"provider": "p", "name": "m"}}})
    assert problem in str(exc.value)
