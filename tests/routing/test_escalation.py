"""`[routes.X] escalate = { to = "strong" }`: a non-streamed answer that disagrees with what the
route's memory answers is re-asked from the stronger variant, and the call costs both answers."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.settings import ConfigError, Price, RetrySettings, RouteSettings, parse_settings
from gateway.providers.base import Body, UpstreamCall, UpstreamError, UpstreamResponse
from gateway.providers.fakes.provider import FakeProvider
from gateway.serve.pipeline import Augmentation, Pipeline, RequestContext, disagrees
from gateway.serve.runtime import RouteRuntime, Target
from gateway.store.records import CallRecord
from policies.featurise import memory_answer, same_answer
from policies.static import StaticPolicy

QUESTION = "Utterance: play some jazz"


class Retrieved:
    """An augmenter whose retrieved examples answer `answers`, nearest first (none: nothing retrieved)."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers

    async def augment(self, route: str, messages: list[Body], ctx: RequestContext) -> Augmentation:
        return Augmentation(list(messages), memory=memory_answer(self.answers))


class Down:
    """A provider that always fails with a 503."""

    name = "down"

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        raise UpstreamError("overloaded", status=503)


def target(variant: str, provider: Any, price: float) -> Target:
    return Target(variant, variant, provider, f"{variant}-1", {}, Price(input_per_mtok=price, output_per_mtok=price))


def route(cheap_reply: str, *, strong: Any = None, escalate_to: str | None = "strong") -> RouteRuntime:
    targets = {"cheap": target("cheap", FakeProvider("c", replies={"jazz": cheap_reply}), 1.0),
               "strong": target("strong", strong or FakeProvider("s", replies={"jazz": "PlayMusic"}), 20.0)}
    return RouteRuntime("intents", targets, StaticPolicy("cheap"), RetrySettings(attempts=1, initial_delay_s=0),
                        RouteSettings(variants=["cheap", "strong"]), escalate_to=escalate_to)


async def ask(rt: RouteRuntime, *memory: str) -> tuple[Body, CallRecord]:
    """One call through `rt` whose retrieved examples answer `memory`, nearest first."""
    logged: list[CallRecord] = []
    pipeline = Pipeline(logged.append, Retrieved(*memory))
    out, record = await pipeline.chat(rt, {"model": "intents", "messages": [{"role": "user", "content": QUESTION}]},
                                      RequestContext("call-1"))
    assert logged == [record]
    return out, record


def answer(out: Body) -> str:
    return str(out["choices"][0]["message"]["content"])


async def test_an_answer_memory_disagrees_with_is_reanswered_by_the_strong_variant_and_both_are_paid() -> None:
    out, record = await ask(route("GetWeather"), "playmusic")
    assert answer(out) == "PlayMusic" and out["id"] == "call-1"
    assert (record.variant, record.model) == ("strong", "strong")
    assert [(a.model, a.status) for a in record.attempts] == [("cheap", 200), ("strong", 200)]
    assert "cheap's answer disagreed with memory: escalated to strong, which answered differently" in (
        record.policy_reason)
    prompt, completion = out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]
    strong_cost = (prompt + completion) * 20.0 / 1e6
    assert record.cost_usd is not None and record.cost_usd > strong_cost  # the cheap answer is paid for too
    esc = record.escalation
    assert esc is not None and (esc.variant, esc.model, esc.same_answer) == ("cheap", "cheap", False)
    assert esc.cost_usd is not None and record.cost_usd == pytest.approx(strong_cost + esc.cost_usd)


async def test_an_escalation_notes_when_the_stronger_variant_said_the_same() -> None:
    _, record = await ask(route(" PLAYMUSIC"), "getweather")
    assert record.variant == "strong" and record.escalation is not None and record.escalation.same_answer
    assert record.policy_reason.endswith("escalated to strong, which answered the same")


@pytest.mark.parametrize("memory", [("playmusic",), ()])
async def test_an_agreeing_answer_or_no_memory_is_served_as_it_is(memory: tuple[str, ...]) -> None:
    out, record = await ask(route(" playmusic\n"), *memory)
    assert answer(out).strip() == "playmusic" and record.variant == "cheap"
    assert [a.model for a in record.attempts] == ["cheap"]


async def test_without_the_setting_nothing_is_escalated() -> None:
    _, record = await ask(route("GetWeather", escalate_to=None), "playmusic")
    assert record.variant == "cheap" and len(record.attempts) == 1


async def test_a_failed_escalation_serves_the_first_answer() -> None:
    out, record = await ask(route("GetWeather", strong=Down()), "playmusic")
    assert answer(out) == "GetWeather" and (record.variant, record.model) == ("cheap", "cheap")
    assert [(a.model, a.status) for a in record.attempts] == [("cheap", 200), ("strong", 503)]
    assert "escalation to strong failed (503)" in record.policy_reason and record.escalation is None


async def test_evaluation_replays_pinned_to_a_variant_never_escalate() -> None:
    _, record = await ask(route("GetWeather").pinned("cheap"), "playmusic")
    assert record.variant == "cheap" and len(record.attempts) == 1


def test_only_single_text_answers_are_compared() -> None:
    text = {"choices": [{"message": {"role": "assistant", "content": "GetWeather"}}]}
    tools = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]}}]}
    two = {"choices": [text["choices"][0], text["choices"][0]]}
    play, weather = memory_answer(["PlayMusic"]), memory_answer(["GetWeather"])
    assert disagrees(text, play) and not disagrees(text, weather)
    assert not disagrees(tools, play) and not disagrees(two, play) and not disagrees({}, play)
    assert not disagrees(text, None)


async def test_an_answer_naming_the_memorys_label_in_its_own_words_is_not_escalated() -> None:
    # a small model seldom echoes the label exactly: the label it names counts, not its punctuation
    for reply in ("PlayMusic.", "The intent is: playmusic", '"PLAYMUSIC"\n\nBecause the user asks for jazz.'):
        _, record = await ask(route(reply), "PlayMusic", "GetWeather", "playmusic")
        assert record.variant == "cheap" and record.escalation is None, reply


@pytest.mark.parametrize("reply", ["Intent: GetWeather, not music.", "I cannot tell."])
async def test_an_answer_naming_another_label_or_none_is_escalated(reply: str) -> None:
    _, record = await ask(route(reply), "PlayMusic", "GetWeather", "playmusic")
    assert record.variant == "strong" and record.escalation is not None


async def test_the_escalated_answer_is_the_same_when_it_names_the_same_label() -> None:
    # memory mostly says GetWeather; cheap names PlayMusic in a sentence, strong answers "PlayMusic"
    _, record = await ask(route("Intent: playmusic."), "GetWeather", "PlayMusic", "getweather")
    assert record.variant == "strong" and record.escalation is not None and record.escalation.same_answer
    assert "which answered the same" in record.policy_reason
    _, record = await ask(route("Answer: GetWeather!"), "PlayMusic", "GetWeather", "PlayMusic")
    assert record.escalation is not None and record.escalation.same_answer is False
    assert "which answered differently" in record.policy_reason


def test_reading_an_answer_keeps_signs_and_prefers_the_first_and_longest_label() -> None:
    memory = memory_answer(["-4", "4", "tech", "tech support", "billing"])
    assert memory is not None
    assert memory.reading("The score is -4.") == ("-4",) and memory.reading("+4") == ("4",)
    assert memory.reading("Tech support, then billing") == ("tech", "support")
    assert memory.reading("billing or tech") == ("billing",) and memory.reading("no idea") is None
    assert same_answer("It is -4", "−4", memory) and not same_answer("4", "-4", memory)
    assert same_answer("a long free answer", "A long, free answer!") and not same_answer("x", "y")


def test_free_text_memory_is_matched_by_its_words_only() -> None:
    long = "Paris is the capital and largest city of France by population"
    memory = memory_answer([long])
    assert memory is not None
    assert not memory.disagrees(long.upper() + ".") and memory.disagrees(f"Yes. {long}")


def test_memory_answer_is_the_majority_and_a_tie_goes_to_the_nearest() -> None:
    memory = memory_answer(["PlayMusic", "GetWeather", "playmusic "])
    assert memory is not None and memory.answer == ("playmusic",)
    assert memory.choices == (("playmusic",), ("getweather",)) and memory.agreement == 2 / 3
    tie = memory_answer(["GetWeather", "PlayMusic"])
    assert tie is not None and tie.answer == ("getweather",)
    assert memory_answer([]) is None


def test_config_names_an_escalation_target_that_is_not_a_variant() -> None:
    cfg: dict[str, Any] = {
        "providers": {"f": {"kind": "fake"}},
        "models": {"a": {"provider": "f", "name": "a"}},
        "routes": {"r": {"variants": ["a"], "escalate": {"to": "b"}}},
    }
    with pytest.raises(ConfigError, match=r"routes\.r\.escalate\.to: 'b' is not a variant of this route"):
        parse_settings(cfg)
