"""Assistant text of stored responses, and response -> correction diffs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.capture.corrections import correction_diff, response_text
from gateway.messages import content_text


def _resp(message: dict[str, Any], n: int = 1) -> dict[str, Any]:
    choices = [{"index": i, "finish_reason": "stop", "message": message} for i in range(n)]
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": choices}


def test_response_text_plain() -> None:
    assert response_text(_resp({"role": "assistant", "content": "Hello there."})) == "Hello there."


def test_response_text_first_choice_only() -> None:
    body = _resp({"role": "assistant", "content": "first"}, n=2)
    body["choices"][1]["message"] = {"role": "assistant", "content": "second"}
    assert response_text(body) == "first"


def test_response_text_tool_calls_compact() -> None:
    message = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "a",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris","unit":"C"}'},
            },
            {"id": "b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }
    assert (
        response_text(_resp(message))
        == 'Let me check.\n-> weather({"city": "Paris", "unit": "C"})\n-> time({})'
    )


def test_response_text_truncated_arguments_and_legacy_function_call() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1'}}],
    }
    assert response_text(_resp(message)) == '-> f({"a": 1)'
    legacy = {"role": "assistant", "content": None, "function_call": {"name": "g", "arguments": '{"b":2}'}}
    assert response_text(_resp(legacy)) == '-> g({"b": 2})'


def test_response_text_multipart_refusal_and_json_string() -> None:
    parts = {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    assert response_text(_resp(parts)) == "a\nb"
    refusal = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    assert response_text(_resp(refusal)) == "I can't help with that."
    assert (
        response_text(json.dumps(_resp({"role": "assistant", "content": "from a string"}))) == "from a string"
    )


@pytest.mark.parametrize("body", [None, "", "not json", 42, [], {}, {"choices": []}, {"choices": [None]}])
def test_response_text_unrecognisable_is_empty(body: Any) -> None:
    assert response_text(body) == ""


def test_response_text_legacy_completion_choice() -> None:
    assert response_text({"choices": [{"text": "completion text"}]}) == "completion text"


def test_content_text() -> None:
    assert content_text("x") == "x"
    assert (
        content_text([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}]) == "a"
    )
    assert content_text(None) == ""


def test_correction_diff_equal_is_empty() -> None:
    assert correction_diff("same", "same") == ""
    assert correction_diff("same", "same", by="word") == ""


def test_correction_diff_lines() -> None:
    diff = correction_diff(
        "Line one.\nThe capital is Sydney.\nLine three.", "Line one.\nThe capital is Canberra.\nLine three."
    )
    assert diff.splitlines() == [
        "--- response",
        "+++ correction",
        "@@ -1,3 +1,3 @@",
        " Line one.",
        "-The capital is Sydney.",
        "+The capital is Canberra.",
        " Line three.",
    ]


def test_correction_diff_splits_long_paragraphs_at_sentences() -> None:
    filler = "This sentence is long enough to push the paragraph past the split limit, by design."
    a = f"Intro sentence. The answer is 41. {filler} {filler}"
    b = f"Intro sentence. The answer is 42. {filler} {filler}"
    lines = correction_diff(a, b).splitlines()
    assert "-The answer is 41." in lines and "+The answer is 42." in lines
    assert not any(line.startswith(("-", "+")) and filler in line for line in lines[2:])


def test_correction_diff_words() -> None:
    assert (
        correction_diff(
            "The capital of Australia is Sydney.", "The capital of Australia is Canberra.", by="word"
        )
        == "The capital of Australia is [-Sydney.-]{+Canberra.+}"
    )
    assert correction_diff("a b c d", "a x c d e", by="word") == "a [-b-]{+x+} c d {+e+}"
    assert correction_diff("hello world", "hello", by="word") == "hello [-world-]"


def test_correction_diff_from_empty_response() -> None:
    diff = correction_diff("", "The right answer.")
    assert diff.splitlines()[-1] == "+The right answer."
