"""Implicit signals: regenerated, rephrased, corrected, and the cases that must stay silent."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.capture.signals import SignalDetector, similarity, tokens
from gateway.store.records import CallRecord

T0 = 1_700_000_000.0
_ids = itertools.count()


def call(
    user_text: str,
    *,
    at: float = T0,
    user: str | None = "u1",
    route: str = "support-bot",
    answer: str = "Paris is the capital of France.",
    history: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> CallRecord:
    messages = [
        {"role": "system", "content": "Be brief."},
        *(history or []),
        {"role": "user", "content": user_text},
    ]
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    return CallRecord(
        id=f"chatcmpl-{next(_ids)}",
        route=route,
        variant="small",
        model="small",
        created_at=at,
        user=user,
        request={"model": route, "messages": messages},
        response=response,
        **kw,
    )


def follow_up(prev: CallRecord, user_text: str, at: float, **kw: Any) -> CallRecord:
    """The same conversation continued: the earlier exchange, then a new user message."""
    history = [m for m in prev.request["messages"] if m["role"] != "system"]
    history.append(prev.response["choices"][0]["message"])
    return call(user_text, at=at, history=history, **kw)


@pytest.fixture
def det() -> SignalDetector:
    return SignalDetector(window_s=120, similar=0.9, rephrase_min=0.5)


def test_regenerated_same_message(det: SignalDetector) -> None:
    first = call("What is the capital of France?")
    assert det.observe(first) == []
    second = call("What is the capital of France?", at=T0 + 10)
    [fb] = det.observe(second)
    assert (fb.signal, fb.source, fb.call_id, fb.related_call_id) == (
        "regenerated",
        "inferred",
        first.id,
        second.id,
    )
    assert fb.user == "u1" and fb.comment is None and fb.created_at == second.created_at


def test_regenerated_near_identical(det: SignalDetector) -> None:
    det.observe(call("What is the capital of France?"))
    [fb] = det.observe(call("  what is the capital of france ", at=T0 + 5))
    assert fb.signal == "regenerated"


def test_rephrased(det: SignalDetector) -> None:
    first = call("Write a short poem about the sea")
    det.observe(first)
    [fb] = det.observe(call("Write a short funny poem about the ocean", at=T0 + 30))
    assert fb.signal == "rephrased" and fb.call_id == first.id


def test_corrected_in_continued_conversation(det: SignalDetector) -> None:
    first = call("What is the capital of Australia?", answer="Sydney is the capital of Australia.")
    det.observe(first)
    second = follow_up(first, "No, that's wrong: it is Canberra.", at=T0 + 20)
    [fb] = det.observe(second)
    assert (fb.signal, fb.call_id, fb.related_call_id) == ("corrected", first.id, second.id)
    assert fb.comment == "No, that's wrong: it is Canberra."


def test_corrected_when_answer_was_a_tool_call(det: SignalDetector) -> None:
    first = call("Weather in Paris?", answer="")
    first.response["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    det.observe(first)
    history = [{"role": "user", "content": "Weather in Paris?"}, first.response["choices"][0]["message"]]
    [fb] = det.observe(call("Actually I meant Paris, Texas.", at=T0 + 5, history=history))
    assert fb.signal == "corrected"


def test_continued_conversation_without_correction_is_silent(det: SignalDetector) -> None:
    first = call("What is the capital of France?")
    det.observe(first)
    # Even a repeated short message inside the same thread is a follow-up, not a regeneration.
    assert det.observe(follow_up(first, "Thanks! And of Spain?", at=T0 + 20)) == []
    assert det.observe(follow_up(first, "What is the capital of France?", at=T0 + 25)) == []


@pytest.mark.parametrize(
    "text",
    [
        "no, I meant the other one",
        "That's not what I asked.",
        "actually it should be 42",
        "Not Paris but Lyon.",
        "You are wrong about that",
        "Nein, ich meinte Berlin.",
        "Non, je voulais dire Lyon",
        "c’est faux",
        "No quise decir eso",
        "Eso está mal",
        "Na verdade é Lisboa",
        "Nee, ik bedoelde Utrecht",
    ],
)
def test_correction_phrases(det: SignalDetector, text: str) -> None:
    assert det.is_correction(text)


@pytest.mark.parametrize(
    "text",
    [
        "No worries, thanks!",
        "Now list three more.",
        "Not only fast but also cheap, great.",
        "Great, thanks",
        "",
    ],
)
def test_non_correction_phrases(det: SignalDetector, text: str) -> None:
    assert not det.is_correction(text)


def test_negative_different_user(det: SignalDetector) -> None:
    det.observe(call("What is the capital of France?", user="alice"))
    assert det.observe(call("What is the capital of France?", at=T0 + 5, user="bob")) == []


def test_negative_outside_window(det: SignalDetector) -> None:
    det.observe(call("What is the capital of France?"))
    assert det.observe(call("What is the capital of France?", at=T0 + 121)) == []


def test_negative_out_of_order_call(det: SignalDetector) -> None:
    det.observe(call("What is the capital of France?", at=T0 + 50))
    assert det.observe(call("What is the capital of France?", at=T0)) == []


def test_negative_different_route(det: SignalDetector) -> None:
    det.observe(call("What is the capital of France?"))
    assert det.observe(call("What is the capital of France?", at=T0 + 5, route="other-bot")) == []


def test_negative_unrelated_prompt(det: SignalDetector) -> None:
    det.observe(call("What is the capital of France?"))
    assert det.observe(call("Summarise this contract in three bullet points.", at=T0 + 5)) == []


def test_negative_no_actor_and_no_log(det: SignalDetector) -> None:
    det.observe(call("Hello there, what time is it?", user=None))
    assert det.observe(call("Hello there, what time is it?", at=T0 + 1, user=None)) == []
    det.observe(call("Tell me a joke", user="u9", no_log=True))
    assert det.observe(call("Tell me a joke", at=T0 + 1, user="u9")) == []
    assert len(det) == 1


def test_failed_call_is_not_a_reference(det: SignalDetector) -> None:
    det.observe(call("What is the capital of France?", status=502, error="upstream down"))
    assert det.observe(call("What is the capital of France?", at=T0 + 3)) == []


def test_session_and_key_identify_the_actor(det: SignalDetector) -> None:
    det.observe(call("Explain recursion simply", user=None, session_id="s1"))
    assert [
        f.signal for f in det.observe(call("Explain recursion simply", at=T0 + 2, user=None, session_id="s1"))
    ] == ["regenerated"]
    det.observe(call("Explain recursion simply", user=None, key_id="team-a"))
    assert det.observe(call("Explain recursion simply", at=T0 + 2, user=None, key_id="team-b")) == []


def test_pairs_with_the_latest_call_on_the_route(det: SignalDetector) -> None:
    a = call("Draft a tweet about our launch")
    b = call("Translate hello into German", at=T0 + 1, route="translate")
    c = call("Draft a tweet about our launch", at=T0 + 2)
    det.observe(a)
    det.observe(b)
    assert [f.call_id for f in det.observe(c)] == [a.id]
    [fb] = det.observe(call("Draft a tweet about our launch", at=T0 + 3))
    assert fb.call_id == c.id


def test_memory_is_bounded() -> None:
    det = SignalDetector(window_s=60, max_actors=3, per_actor=2)
    for i in range(10):
        det.observe(call(f"question number {i}", user=f"user{i}"))
    assert len(det) == 3
    assert det.observe(call("question number 0", at=T0 + 1, user="user0")) == []  # evicted
    [fb] = det.observe(call("question number 9", at=T0 + 1, user="user9"))
    assert fb.signal == "regenerated"


def test_thresholds_are_configurable() -> None:
    strict = SignalDetector(window_s=60, similar=1.0, rephrase_min=0.99)
    strict.observe(call("Write a short poem about the sea"))
    assert strict.observe(call("Write a short funny poem about the ocean", at=T0 + 1)) == []
    with pytest.raises(ValueError):
        SignalDetector(window_s=60, similar=0.4, rephrase_min=0.5)


def test_similarity() -> None:
    assert similarity(tokens("Hello, World!"), tokens("hello world")) == 1.0
    assert similarity(tokens("a b c d"), tokens("w x y z")) == 0.0
    assert 0.5 < similarity(tokens("the cat sat on the mat"), tokens("the dog sat on the mat")) < 0.9
    # Order counts: same words, reversed, is not the same message.
    assert similarity(tokens("dog bites man"), tokens("man bites dog")) < 0.9
    assert similarity((), tokens("x")) == 0.0
