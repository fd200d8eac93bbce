"""The fake model's simulated in-context learning: similar demonstrations are imitated, rules followed."""

from __future__ import annotations

from typing import Any

from gateway.providers.fakes.provider import FakeEngine

ANSWER = "You can return items within 14 days."


def reply(messages: list[dict[str, Any]], **engine: Any) -> str:
    body = FakeEngine(**engine).complete({"model": "m", "messages": messages})
    return str(body["choices"][0]["message"]["content"])


def test_plain_request_is_still_an_echo() -> None:
    assert reply([{"role": "user", "content": "hello there"}]) == "You said: hello there"


def test_similar_few_shot_pair_is_imitated() -> None:
    msgs = [
        {"role": "user", "content": "How long do I have to return an item?"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Is there a deadline to return an item?"},
    ]
    assert reply(msgs) == ANSWER


def test_dissimilar_pair_is_ignored() -> None:
    msgs = [
        {"role": "user", "content": "How much does shipping cost?"},
        {"role": "assistant", "content": "Free."},
        {"role": "user", "content": "How do I reset my password?"},
    ]
    assert reply(msgs) == "You said: How do I reset my password?"


def test_most_similar_demonstration_wins_and_a_wrong_one_hurts() -> None:
    msgs = [
        {"role": "system", "content": "Examples:\nUser: What is the shipping cost to Germany?\nAssistant: Wrong!"},
        {"role": "user", "content": "How long to return an item?"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Shipping cost to Germany please"},
    ]
    assert reply(msgs) == "Wrong!"


def test_system_prompt_demonstrations_count() -> None:
    system = f"Be nice.\nExamples:\nUser: How long do I have to return an item?\nAssistant: {ANSWER}"
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "What is the limit to return an item?"}]
    assert reply(msgs) == ANSWER


def test_rules_are_followed_when_the_question_mentions_the_topic() -> None:
    system = "Rules:\n- Answers about refunds must mention: the 14-day window"
    asked = [{"role": "system", "content": system}, {"role": "user", "content": "How do refund requests work?"}]
    assert reply(asked) == "You said: How do refund requests work? the 14-day window"
    other = [{"role": "system", "content": system}, {"role": "user", "content": "Where is my parcel?"}]
    assert reply(other) == "You said: Where is my parcel?"


def test_rule_is_not_repeated_when_the_answer_already_says_it() -> None:
    system = f"Answers about returns must mention: 14 days\nExamples:\nUser: how to return an item\nAssistant: {ANSWER}"
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "can I return an item late"}]
    assert reply(msgs) == ANSWER


def test_scripted_replies_still_work_without_demonstrations() -> None:
    assert reply([{"role": "user", "content": "grade this"}], replies={"grade": "0.75"}) == "0.75"


def test_streaming_carries_the_same_imitated_answer() -> None:
    msgs = [
        {"role": "user", "content": "How long do I have to return an item?"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Deadline to return an item?"},
    ]
    chunks = FakeEngine().chunks({"model": "m", "messages": msgs})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ANSWER
