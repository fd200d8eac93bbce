"""Learned routes on the request path: embedding + Features for learned routes only, and online
learning from explicit feedback, inferred signals and the unrated-window rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.serve.augment import LoadedIndex, RouteServing, ServingSet
from gateway.serve.routing import LearnedRouting
from gateway.store.records import Escalation
from policies import Features, LearnedPolicy
from retrieval.embeddings import HashingEmbedder
from retrieval.examples import Example, ExampleIndex
from tests.conftest import fetch_call
from tests.routing.conftest import HARD, routing_config, wait_for

EASY_PRIORS = {"cheap": 0.85, "strong": 0.9}  # the cheap model is tried first


def chat(gw: Any, route: str, text: str, user: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": route, "messages": [{"role": "user", "content": text}]}
    if user is not None:
        body["user"] = user
    r = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r


def feedback(gw: Any, call_id: str, **fields: Any) -> None:
    r = httpx.post(gw.v1 + "/feedback", json={"call_id": call_id, **fields}, timeout=10)
    assert r.status_code == 201, r.text


def routing(gw: Any) -> LearnedRouting:
    router: LearnedRouting = gw.gateway.routing
    return router


def live(gw: Any) -> LearnedPolicy:
    policy = gw.gateway.runtime.routes["smart"].policy
    assert isinstance(policy, LearnedPolicy)
    return policy


def test_only_learned_routes_are_embedded_and_remembered(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path))
    learned = chat(gw, "smart", "How do I reset my password?")
    plain = chat(gw, "plain", "How do I reset my password?")
    router = routing(gw)
    ids = learned.headers["x-flywheel-call-id"], plain.headers["x-flywheel-call-id"]
    assert router.known([ids[0]]) == 1 and router.known([ids[1]]) == 0
    seen = router._memory[ids[0]]
    assert seen.features.embedding is not None and seen.features.embedding.shape == (256,)  # hashing embedder
    assert np.isclose(float(np.linalg.norm(seen.features.embedding)), 1.0, atol=1e-5)
    assert seen.variant == learned.headers["x-flywheel-variant"] and seen.cost > 0
    assert router.stats.decisions == 1 and router.stats.embed_missing == 0
    rec = fetch_call(gw, ids[0])
    assert rec.policy_reason.startswith("learned:") and rec.choice_probability == pytest.approx(1.0)
    assert not fetch_call(gw, ids[1]).policy_reason.startswith("learned")


def test_feedback_updates_the_live_policy(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path, prior_quality=EASY_PRIORS))
    r = chat(gw, "smart", f"What is the {HARD} of x squared?")
    assert r.headers["x-flywheel-variant"] == "cheap"
    assert r.json()["choices"][0]["message"]["content"].startswith("Sorry"), "the cheap fake fails hard requests"
    seen = routing(gw)._memory[r.headers["x-flywheel-call-id"]]
    before = live(gw).predict(seen.features)["cheap"]
    feedback(gw, r.headers["x-flywheel-call-id"], rating=-1)
    wait_for(lambda: live(gw).updates == 1, what="the online update")
    assert live(gw).predict(seen.features)["cheap"] < before
    feedback(gw, r.headers["x-flywheel-call-id"], rating=1)  # a second row about the same call
    wait_for(lambda: routing(gw).stats.ignored == 1, what="the repeated row to be ignored")
    assert live(gw).updates == 1


def test_feedback_on_an_escalated_call_also_teaches_the_variant_it_replaced(
    make_gateway: Any, tmp_path: Path
) -> None:
    gw = make_gateway(routing_config(tmp_path, prior_quality=EASY_PRIORS))
    r = chat(gw, "smart", "play some jazz")
    assert r.headers["x-flywheel-variant"] == "cheap"
    seen = routing(gw)._memory[r.headers["x-flywheel-call-id"]]
    # as the pipeline remembers a call whose cheap answer strong re-answered differently
    seen.variant, seen.escalation = "strong", Escalation("cheap", "cheap", cost_usd=0.0, same_answer=False)
    before = live(gw).predict(seen.features)
    feedback(gw, r.headers["x-flywheel-call-id"], rating=1)
    wait_for(lambda: live(gw).updates == 2, what="both online updates")
    after = live(gw).predict(seen.features)
    assert after["strong"] > before["strong"] and after["cheap"] < before["cheap"]


def test_unknown_calls_and_silent_feedback_do_not_update(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path))
    r = chat(gw, "smart", "hello")
    feedback(gw, r.headers["x-flywheel-call-id"], comment="nice tone")  # says nothing under "rating"
    plain = chat(gw, "plain", "hello")
    feedback(gw, plain.headers["x-flywheel-call-id"], rating=1)  # a static route: not remembered
    wait_for(lambda: routing(gw).stats.ignored == 1 and routing(gw).stats.unmatched == 1, what="both rows")
    assert live(gw).updates == 0


def test_inferred_regeneration_updates_under_metric_any(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path, quality_metric="any", prior_quality=EASY_PRIORS))
    first = chat(gw, "smart", f"Explain the {HARD} sign to me", user="ann")
    chat(gw, "smart", f"Explain the {HARD} sign to me", user="ann")  # asks again: regenerated
    wait_for(lambda: live(gw).updates == 1, what="the inferred signal's update")
    assert routing(gw)._memory[first.headers["x-flywheel-call-id"]].learned


def test_unrated_calls_count_as_ok_after_the_window(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path, unrated="ok", unrated_after_s=0))
    chat(gw, "smart", "What are your opening hours?")
    wait_for(lambda: routing(gw).stats.implicit_updates == 1, what="the implicit update")
    assert live(gw).updates == 1


def test_unrated_calls_are_ignored_by_default(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path, unrated_after_s=0))
    r = chat(gw, "smart", "What are your opening hours?")
    wait_for(lambda: not routing(gw)._unrated.get("smart"), what="the sweep")
    feedback(gw, r.headers["x-flywheel-call-id"], rating=1)  # explicit feedback still counts after it
    wait_for(lambda: live(gw).updates == 1, what="the explicit update")
    assert routing(gw).stats.implicit_updates == 0


def test_a_frozen_route_does_not_learn(make_gateway: Any, tmp_path: Path) -> None:
    cfg = routing_config(tmp_path)
    cfg["routes"]["smart"]["learn"] = False
    gw = make_gateway(cfg)
    r = chat(gw, "smart", "hello")
    feedback(gw, r.headers["x-flywheel-call-id"], rating=-1)
    wait_for(lambda: routing(gw).stats.ignored == 1, what="the refused update")
    assert live(gw).frozen and live(gw).updates == 0


def test_a_policy_without_embedding_dims_is_not_embedded(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path, dims=0))
    r = chat(gw, "smart", "hello")
    seen = routing(gw)._memory[r.headers["x-flywheel-call-id"]]
    assert seen.features.embedding is None and seen.features.prompt_chars == len("hello")
    assert isinstance(seen.features, Features)


def test_the_router_sees_what_retrieval_found(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path))
    examples = [Example(f"m{i}#f", q, "PlayMusic", f"m{i}", "correction", float(i))
                for i, q in enumerate(["play some jazz music", "play jazz music now"])]
    index = ExampleIndex.build(examples, HashingEmbedder())
    gw.gateway.augmenter.install("smart", RouteServing(ServingSet(None, LoadedIndex("i1", index))))
    remembered = chat(gw, "smart", "play jazz music")
    novel = chat(gw, "smart", "what is the integral of x squared")
    seen = routing(gw)._memory
    f = seen[remembered.headers["x-flywheel-call-id"]].features
    assert f.memory_score > 0.5 and f.memory_agreement == 1.0
    assert seen[novel.headers["x-flywheel-call-id"]].features.memory_score < f.memory_score
