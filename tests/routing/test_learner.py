"""The policy learner: off-policy estimates against the truth, the verdict, a full cycle on a seeded
store that ends in a canary artifact, and the router following canary -> promoted."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.config.settings import parse_settings
from gateway.serve.outcomes import Outcome, Replay
from gateway.serve.routing import LearnedRouting
from gateway.serve.runtime import build_runtime
from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.records import CallRecord, Escalation, FeedbackRecord
from learners.rollout import Rollout
from learners.routing import evaluate, fit_policy, learn_policy
from learners.routing_data import Example, build_examples
from learners.routing_eval import estimate_ips, estimate_replay, judge
from policies import Features, LearnedPolicy
from retrieval.embeddings import HashingEmbedder, threaded
from tests.routing.conftest import HARD, routing_config, wait_for

CHEAP, STRONG = "cheap", "strong"
COST = {CHEAP: 0.001, STRONG: 0.02}
P_OK = {CHEAP: (0.95, 0.1), STRONG: (0.95, 0.95)}  # (easy, hard)


def policy(**kw: object) -> LearnedPolicy:
    params: dict[str, object] = {"min_quality": 0.75, "explore": 0.0, "dims": 8,
                                 "prior_quality": {CHEAP: 0.6, STRONG: 0.9}, "prior_cost": {CHEAP: 1, STRONG: 20}}
    params.update(kw)
    return LearnedPolicy([CHEAP, STRONG], fallbacks=[STRONG], **params)  # type: ignore[arg-type]


def world(n: int, seed: int = 0) -> tuple[list[Example], list[bool]]:
    """Calls logged by a uniform random router (propensity 0.5), with 0/1 feedback."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 16))
    examples, hard = [], []
    for i in range(n):
        c = int(rng.integers(4))
        is_hard = c >= 3  # one cluster in four is hard
        f = Features("smart", None, None, 300, 1, False, (centres[c] + rng.standard_normal(16) * 0.05))
        v = CHEAP if rng.random() < 0.5 else STRONG
        q = float(rng.random() < P_OK[v][int(is_hard)])
        examples.append(Example(f"c{i}", float(i), f, v, q, COST[v], 0.5, None))
        hard.append(is_hard)
    return examples, hard


def true_value(p: LearnedPolicy, examples: list[Example], hard: list[bool]) -> tuple[float, float]:
    """Expected quality and cost per call of `p` on these requests, from the known P(ok)."""
    q = c = 0.0
    for e, h in zip(examples, hard, strict=True):
        for v, x in p.action_probabilities(e.features).items():
            q += x * P_OK[v][int(h)]
            c += x * COST[v]
    return q / len(examples), c / len(examples)


def test_ips_estimates_match_the_truth() -> None:
    logged, hard = world(3000)
    trained = fit_policy(policy(), logged[:1500])
    shares = trained.action_probabilities(logged[0].features)
    assert sum(shares.values()) == pytest.approx(1.0)
    for p in (policy(), trained):  # untrained (all strong) and trained (cheap on easy requests)
        est = estimate_ips(p, logged[1500:])
        q, c = true_value(p, logged[1500:], hard[1500:])
        assert est.quality == pytest.approx(q, abs=0.03) and est.cost == pytest.approx(c, rel=0.1)
        assert est.n == 1500 and est.effective_n > 500
    assert estimate_ips(trained, logged[1500:]).shares[CHEAP] == pytest.approx(0.75, abs=0.05)


def test_replay_estimate_is_exact_on_known_outcomes() -> None:
    logged, hard = world(200, seed=1)
    replays = [Replay(e.features, {CHEAP: Outcome(P_OK[CHEAP][h], COST[CHEAP]), STRONG: Outcome(0.95, COST[STRONG])})
               for e, h in zip(logged, hard, strict=True)]
    p = fit_policy(policy(), logged)
    est = estimate_replay(p, replays)
    q, c = true_value(p, logged, hard)
    assert est.n == 200 and est.quality == pytest.approx(q) and est.cost == pytest.approx(c)


def test_verdict_prefers_cheaper_at_equal_quality_and_refuses_a_quality_drop() -> None:
    logged, _ = world(3000, seed=2)
    current = policy()  # untrained: everything to the strong model
    trained = fit_policy(current, logged[:2000])
    ev = evaluate(current, trained, logged[2000:], max_quality_drop=0.03)  # IPS noise is ~±1.5 pt here
    assert ev.verdict.accepted and ev.verdict.cost_ratio is not None and ev.verdict.cost_ratio < 0.5
    assert ev.verdict.quality_delta is not None and ev.verdict.quality_delta > -0.03
    naive = policy(prior_quality={CHEAP: 0.95, STRONG: 0.9})  # untrained and over-confident in cheap
    ev = evaluate(trained, naive, logged[2000:])
    assert not ev.verdict.accepted and "quality" in ev.verdict.reason
    thin = evaluate(current, trained, logged[2000:2010])
    assert not thin.verdict.accepted and "not enough evidence" in thin.verdict.reason
    assert not judge(ev.current, ev.current).accepted  # no better on anything


def escalated_call(cid: str, *, same_answer: bool) -> CallRecord:
    """A call the policy sent to cheap (p=0.9) whose answer strong re-answered; 0.021 paid in all."""
    return CallRecord(cid, "smart", STRONG, STRONG, choice_probability=0.9, cost_usd=0.021,
                      request={"messages": [{"role": "user", "content": "play jazz"}]},
                      escalation=Escalation(CHEAP, CHEAP, cost_usd=0.001, same_answer=same_answer))


@pytest.mark.parametrize(("same", "rating", "cheap_quality"), [
    (False, 1, 0.0),  # strong was right and said something else: cheap's answer was wrong
    (False, -1, None),  # both may be wrong: nothing is known about cheap's
    (True, 1, 1.0), (True, -1, 0.0),  # the same answer scores the same
])
def test_an_escalated_call_teaches_what_the_unused_answer_would_have_scored(
    same: bool, rating: int, cheap_quality: float | None
) -> None:
    rec = escalated_call("c1", same_answer=same)
    served, unused = build_examples([rec], [FeedbackRecord("c1", rating=rating)], [None], metric="rating")
    assert (served.variant, served.served, served.quality) == (STRONG, True, float(rating > 0))
    assert served.cost == pytest.approx(0.02) and served.propensity is None  # not the decided variant
    assert (unused.variant, unused.served, unused.quality) == (CHEAP, False, cheap_quality)
    assert unused.cost == pytest.approx(0.001) and unused.propensity == 0.9  # the logged decision was cheap's


async def seed(url: str, n: int = 400) -> None:
    """Calls on route smart logged by a uniform router; cheap fails the HARD ones; users rate them."""
    rng = random.Random(3)
    store = open_store(url)
    await store.migrate()
    calls, fb = [], []
    topics = [f"What is the {HARD} of x to the power {{}}?", "What are your opening hours on day {}?",
              "How do I reset password number {}?", "Where is parcel {}?"]
    for i in range(n):
        text = rng.choice(topics).format(rng.randint(1, 999))
        v = rng.choice([CHEAP, STRONG])
        ok = not (v == CHEAP and HARD in text)
        cid = f"call-{i:04d}"
        calls.append(CallRecord(id=cid, route="smart", variant=v, model=v, created_at=1e9 + i, cost_usd=COST[v],
                                choice_probability=0.5, request={"messages": [{"role": "user", "content": text}]}))
        fb.append(FeedbackRecord(cid, rating=1 if ok else -1, created_at=1e9 + i + 0.5))
    await store.insert_calls(calls)
    for row in fb:
        await store.insert_feedback(row)
    await store.close()


async def test_learn_policy_ships_a_canary_and_the_router_follows_it(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, explore=0.05)
    cfg["learners"]["canary_share"] = 0.5
    await seed(cfg["store"]["url"])
    settings = parse_settings(cfg)
    runtime = build_runtime(settings)
    store = open_store(settings.store.url)
    await store.migrate()
    live = runtime.routes["smart"].policy
    assert isinstance(live, LearnedPolicy) and live.updates == 0
    result = await learn_policy(store, "smart", live, threaded(HashingEmbedder()), learner=settings.learners)
    assert result.outcome == "canary" and result.version == "p1", result.reason
    assert result.n_train == 280 and result.n_held_out == 120
    assert result.summary.startswith("share to cheap") and "cost −" in result.summary
    registry = ArtifactRegistry(store)
    rec = await registry.get("smart", "policy", "p1")
    assert rec is not None and rec.note == result.summary and rec.evaluation["verdict"]["accepted"]
    assert (await registry.states("smart", "policy")).canary == "p1"

    router = LearnedRouting(lambda: runtime, lambda: store)
    await router.sync_artifacts()
    body = {"messages": [{"role": "user", "content": "What are your opening hours on day 3?"}]}
    base = Features("smart", None, None, 37, 1, False)
    versions = set()
    for u in range(40):
        d = await router.decide(runtime.routes["smart"], Features("smart", f"u{u}", None, 37, 1, False), body, f"x{u}")
        versions.add(d.version)
    assert versions == {None, "p1"}, "half the users get the canary, sticky per user"

    # the canary gets feedback through the store; enough of it promotes the canary
    settings_tight = settings.learners.model_copy(update={"canary_min_feedback": 1})
    for i in range(12):  # the canary answers well, the rest of the route poorly
        cid, version = f"k{i}", "p1" if i % 2 == 0 else None
        await store.insert_calls([CallRecord(id=cid, route="smart", variant=CHEAP, model=CHEAP,
                                             policy_version=version, created_at=rec.created_at + 1e9)])
        await store.insert_feedback(FeedbackRecord(cid, rating=1 if version else -1))
    [decision] = await Rollout(registry, lambda: settings_tight).check("smart", ("policy",), "rating")
    assert decision.action == "promoted", decision
    await router.sync_artifacts()
    assert router.versions.promoted == {"smart": "p1"} and live.updates == rec.body["updates"] > 0
    # explore = 0.05 sends a random ~2.5% elsewhere: judge the greedy choices
    decisions = [await router.decide(runtime.routes["smart"], base, body, f"y{i}") for i in range(20)]
    greedy = [d for d in decisions if "explore" not in d.reason]
    assert all(d.version == "p1" for d in decisions) and greedy and all(d.variant == CHEAP for d in greedy)
    await router.stop()
    await store.close()


async def test_too_few_rated_calls_skip_the_cycle(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/empty.db")
    await store.migrate()
    result = await learn_policy(store, "smart", policy(), threaded(HashingEmbedder()))
    assert result.outcome == "skipped" and "0 rated calls" in result.reason
    registry = ArtifactRegistry(store)
    await registry.save_candidate("smart", "policy", policy().to_params(), Manifest(produced_by="test"))
    assert (await registry.states("smart", "policy")).versions["p1"].state == "candidate"
    await store.close()


def test_a_restarted_gateway_rebuilds_its_policy_from_the_store(make_gateway: Any, tmp_path: Path) -> None:
    cfg = routing_config(tmp_path)
    asyncio.run(seed(cfg["store"]["url"]))
    gw = make_gateway(cfg)
    router: LearnedRouting = gw.gateway.routing
    wait_for(lambda: router.stats.rebuilt.get("smart") == 400, what="the start-up rebuild")
    live = gw.gateway.runtime.routes["smart"].policy
    assert isinstance(live, LearnedPolicy) and live.updates == 400
    hard = httpx.post(gw.v1 + "/chat/completions", json={"model": "smart", "messages": [
        {"role": "user", "content": f"What is the {HARD} of x to the power 7?"}]})
    easy = httpx.post(gw.v1 + "/chat/completions", json={"model": "smart", "messages": [
        {"role": "user", "content": "Where is parcel 12?"}]})
    assert (hard.headers["x-flywheel-variant"], easy.headers["x-flywheel-variant"]) == (STRONG, CHEAP)

    loop = router._tasks[0].get_loop()  # learn() runs on the gateway's own event loop, like /admin/learn
    result = asyncio.run_coroutine_threadsafe(gw.learning.routing.learn("smart"), loop).result(60)
    assert result.version == "p1" and result.evaluation is not None and result.n_train == 280
    assert result.outcome in ("canary", "rejected"), result
