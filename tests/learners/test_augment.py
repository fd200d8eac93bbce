"""The request-path augmenter: template first, retrieved pairs before the last user message,
sticky canary assignment, and never failing a request over retrieval."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config.settings import RetrievalSettings, parse_settings
from gateway.messages import query_text
from gateway.serve.augment import (
    Augmenter,
    LoadedIndex,
    LoadedTemplate,
    PinnedAugmenter,
    RouteServing,
    ServingSet,
    actor_of,
    apply,
    bucket,
)
from gateway.serve.injected import client_messages, injected_examples
from gateway.serve.pipeline import RequestContext
from gateway.serve.templating import CompiledTemplate, Template
from gateway.store.records import CallRecord
from learners.routing_data import features_of_call
from retrieval.embeddings import EmbedderBusy, HashingEmbedder
from retrieval.examples import Example, ExampleIndex

EMB = HashingEmbedder()
EXAMPLES = [Example(f"c{i}#f", q, a, f"c{i}", "correction", float(i)) for i, (q, a) in enumerate([
    ("How do I reset my password?", "Use the reset link."),
    ("How much does shipping cost?", "Shipping is free."),
])]
INDEX = LoadedIndex("i1", ExampleIndex.build(EXAMPLES, EMB))
TEMPLATE = LoadedTemplate("t1", CompiledTemplate(Template("Route {{ route }}.")))
RETRIEVAL = RetrievalSettings(k=2, min_score=0.3)


async def embed(text: str) -> np.ndarray:
    return np.asarray(EMB.embed([text])[0])


async def test_apply_renders_template_and_injects_examples_that_client_messages_undo() -> None:
    msgs = [{"role": "system", "content": "client"}, {"role": "user", "content": "reset my password please"}]
    aug = await apply("bot", msgs, ServingSet(TEMPLATE, INDEX), RETRIEVAL, embed)
    assert aug is not None and (aug.template_version, aug.index_version) == ("t1", "i1")
    assert aug.retrieved_ids == ("c0#f",)
    assert [m["role"] for m in aug.messages] == ["system", "system", "user", "assistant", "user"]
    assert aug.messages[0]["content"] == "Route bot."
    assert aug.messages[2:4] == [{"role": "user", "content": EXAMPLES[0].input},
                                 {"role": "assistant", "content": EXAMPLES[0].output}]
    assert msgs[0]["content"] == "client" and len(msgs) == 2  # the caller's list is untouched
    rec = CallRecord(id="x", route="bot", variant="a", model="a", template_version="t1",
                     retrieved_ids=list(aug.retrieved_ids), request={"messages": aug.messages})
    assert client_messages(rec) == msgs


async def test_leave_one_out_hides_the_callers_own_example() -> None:
    msgs = [{"role": "user", "content": "How do I reset my password?"}]
    aug = await PinnedAugmenter(ServingSet(None, INDEX), RETRIEVAL, embed, frozenset({"c0"})).augment(
        "bot", msgs, RequestContext("x"))
    assert aug is not None and "c0#f" not in aug.retrieved_ids


async def test_a_busy_embedder_means_no_retrieval_not_a_failure() -> None:
    async def busy(text: str) -> np.ndarray:
        raise EmbedderBusy("full")

    aug = await apply("bot", [{"role": "user", "content": "reset password"}], ServingSet(TEMPLATE, INDEX),
                      RETRIEVAL, busy)
    assert aug is not None and aug.index_version is None and "retrieval skipped" in aug.reason
    assert len(aug.messages) == 2


async def test_nothing_to_serve_means_no_augmentation() -> None:
    assert await apply("bot", [{"role": "user", "content": "x"}], ServingSet(), RETRIEVAL, embed) is None


def test_actor_and_bucket_are_stable() -> None:
    assert actor_of(RequestContext("c1", user="u", session_id="s", key_name="k")) == "u:u"
    assert actor_of(RequestContext("c1", session_id="s", key_name="k")) == "s:s"
    assert actor_of(RequestContext("c1", key_name="k")) == "c:c1"  # never the key: per call
    assert actor_of(RequestContext("c1")) == "c:c1"
    assert bucket("bot", "u:alice") == bucket("bot", "u:alice") != bucket("other", "u:alice")
    share = sum(bucket("bot", f"u:{i}") < 0.1 for i in range(5000)) / 5000
    assert 0.08 < share < 0.12


async def test_canary_is_sticky_per_user_and_shares_traffic() -> None:
    settings = parse_settings({"providers": {"p": {"kind": "fake"}}, "models": {"m": {"provider": "p", "name": "m"}},
                               "routes": {"bot": {"variants": ["m"]}}})
    aug = Augmenter(lambda: settings, lambda: embed)
    canary_tpl = LoadedTemplate("t2", CompiledTemplate(Template("Canary.")))
    aug.install("bot", RouteServing(ServingSet(TEMPLATE, None), canary_tpl, None, 0.3))
    msgs = [{"role": "user", "content": "hi"}]
    seen: dict[str, set[str | None]] = {}
    for user in [f"user{i}" for i in range(200)]:
        for n in range(3):
            a = await aug.augment("bot", msgs, RequestContext(f"call-{user}-{n}", user=user))
            assert a is not None
            seen.setdefault(user, set()).add(a.template_version)
            if a.template_version == "t2":
                assert a.reason == "canary t2 (30%)"
    assert all(len(v) == 1 for v in seen.values())  # sticky
    assert 40 <= sum(v == {"t2"} for v in seen.values()) <= 80
    aug.install("bot", None)
    assert await aug.augment("bot", msgs, RequestContext("c")) is None


async def test_memory_facts_reach_the_router_and_the_learner_recomputes_them_from_the_log() -> None:
    examples = [Example(f"m{i}#f", q, a, f"m{i}", "correction", float(i)) for i, (q, a) in enumerate([
        ("play some jazz music", "PlayMusic"),
        ("play jazz music now", "PlayMusic"),
        ("will it rain in jazz town", "GetWeather"),
    ])]
    index = LoadedIndex("i2", ExampleIndex.build(examples, EMB))
    msgs = [{"role": "user", "content": "play jazz music"}]
    aug = await apply("bot", msgs, ServingSet(TEMPLATE, index), RetrievalSettings(k=3, min_score=0.0), embed)
    assert aug is not None and len(aug.retrieved_ids) == 3
    assert 0.5 < aug.memory_score <= 1.0
    assert aug.memory_agreement == pytest.approx(2 / 3)
    assert aug.memory is not None and aug.memory.answer == ("playmusic",)  # what most examples answer, for `escalate`
    # offline, from the stored call alone, the policy learner sees the same Features
    rec = CallRecord(id="x", route="bot", variant="a", model="a", template_version="t1",
                     retrieved_ids=list(aug.retrieved_ids), request={"messages": aug.messages})
    nearest_input = injected_examples(rec)[0][0]
    f = features_of_call(rec, await embed(query_text(msgs)), await embed(nearest_input))
    assert f.memory_score == pytest.approx(aug.memory_score, abs=1e-5)
    assert f.memory_agreement == aug.memory_agreement
    assert (f.prompt_chars, f.n_messages) == (len("play jazz music"), 1)  # the client's message, not the shots
    # and a call served without retrieval has no memory
    plain = CallRecord(id="y", route="bot", variant="a", model="a", request={"messages": msgs})
    assert features_of_call(plain, await embed("play jazz music")).memory_score == 0.0
