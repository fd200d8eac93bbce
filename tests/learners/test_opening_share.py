# ruff: noqa: F811 - the `store` fixture is imported (both backends) and named by the tests
"""A new canary opens at `canary_share`, or wider when its offline evaluation alone already makes
it likely better, or when current fails most of its rated calls (a wide canary then risks little):
the feedback that decides it arrives sooner. The share is recorded where the request path reads it."""

from __future__ import annotations

import time
from typing import Any

from gateway.config.settings import LearnerSettings
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.sql import SqlStore
from learners.rollout import Rollout
from learners.sequential import ArmEvidence, Rule, decide, exposure_share
from tests.store.conftest import pg_database, store, store_url  # noqa: F401 - fixtures over both backends

M = Manifest(produced_by="test", note="because")
CFG = LearnerSettings(canary_share=0.1, canary_max_share=0.5)


async def _begin(store: SqlStore, version: str, offline: dict[str, Any]) -> tuple[Any, float | None]:
    reg = ArtifactRegistry(store)
    await reg.save_candidate("bot", "index", {"v": version}, M, version=version, evaluation={"offline": offline})
    decision = await Rollout(reg, lambda: CFG).begin("bot", "index", version, "offline ok")
    return decision, (await reg.states("bot", "index")).versions[version].share


async def test_a_large_offline_gain_opens_the_canary_wide(store: SqlStore) -> None:
    decision, share = await _begin(store, "i1", {"n": 12, "current": 0.17, "candidate": 0.93, "delta": 0.76})
    assert decision.action == "canary" and decision.share == share == 0.5
    assert "offline evaluation's evidence" in decision.reason


async def test_a_tie_opens_at_the_configured_share(store: SqlStore) -> None:
    decision, share = await _begin(store, "i1", {"n": 12, "current": 0.5, "candidate": 0.5, "delta": 0.0})
    assert decision.action == "canary" and decision.share is None and share in (None, 0.1)
    decision, share = await _begin(store, "i2", {})  # queued behind i1: no share of its own yet
    assert decision.action == "queued"


async def _rated_calls(store: SqlStore, n: int, good: int) -> None:
    """`n` calls of the route served by nothing learned yet, `good` of them rated up, the rest down."""
    now = time.time() - 60
    await store.insert_calls(
        [CallRecord(id=f"r{i}", route="bot", variant="m", model="m", created_at=now + i) for i in range(n)]
    )
    for i in range(n):
        await store.insert_feedback(FeedbackRecord(f"r{i}", rating=1 if i < good else -1, created_at=now + i + 0.5))


async def test_a_current_that_fails_most_calls_opens_the_canary_wide(store: SqlStore) -> None:
    await _rated_calls(store, 20, good=2)
    decision, share = await _begin(store, "i1", {})  # no offline evidence at all (too few held-out calls)
    assert decision.action == "canary" and share is not None and 0.3 <= share <= CFG.canary_max_share
    assert "current scores 0.14 on its last 20 rated calls" in decision.reason
    rec = await ArtifactRegistry(store).get("bot", "index", "i1")
    assert rec is not None and rec.evaluation["exposure"] == {"share": share, "current_n": 20, "current_total": 2}


async def test_a_current_that_mostly_succeeds_keeps_the_configured_share(store: SqlStore) -> None:
    await _rated_calls(store, 20, good=17)
    decision, share = await _begin(store, "i1", {})
    assert decision.action == "canary" and share in (None, 0.1) and "current scores" not in decision.reason


def test_the_exposure_share_bounds_what_a_canary_can_lose() -> None:
    rule = Rule.of(CFG)
    assert exposure_share(rule, ArmEvidence(0, 0)) == CFG.canary_share  # current unknown: no shortcut
    failing, good = exposure_share(rule, ArmEvidence(30, 1)), exposure_share(rule, ArmEvidence(30, 27))
    assert CFG.canary_share < failing <= CFG.canary_max_share and good == CFG.canary_share
    # the opening share is this canary's floor while it does not look worse; once it does, canary_share
    assert decide(ArmEvidence(1, 1), ArmEvidence(3, 0), rule, floor=failing).share >= failing
    assert decide(ArmEvidence(6, 0), ArmEvidence(30, 20), rule, floor=failing).share == CFG.canary_share
    # before min_feedback rated canary calls nothing looks worse: 2 of 3 right against 40 of 60
    # keeps the floor (a coin flip from p_better 0.5), and so does a tie on more calls
    early = decide(ArmEvidence(3, 2), ArmEvidence(60, 40), rule, floor=failing)
    assert early.p_better < 0.5 and early.share >= failing
    tie = decide(ArmEvidence(30, 20), ArmEvidence(60, 40), rule, floor=failing)
    assert tie.verdict == "continue" and tie.share >= failing
    behind = decide(ArmEvidence(22, 13), ArmEvidence(47, 30), rule, floor=failing)  # 0.59 vs 0.64: within 0.05
    assert behind.p_worse > behind.p_better and behind.share >= failing - 0.02
    # the floor gives way gradually as P(worse) grows: no flip between floor and canary_share
    shares = [decide(ArmEvidence(20, ok), ArmEvidence(60, 39), rule, floor=failing).share for ok in range(14, 7, -1)]
    assert shares == sorted(shares, reverse=True) and len(set(shares)) >= 4
    assert shares[0] >= failing and shares[-1] <= CFG.canary_share + 0.02


async def test_an_index_that_only_adds_to_current_opens_at_the_cap(store: SqlStore) -> None:
    # It changes only the calls that retrieve its new examples, and rolling a bad one back takes
    # about as many bad rated calls at any share: a wide canary reaches that evidence sooner.
    await _rated_calls(store, 20, good=17)  # current mostly succeeds: no exposure shortcut
    reg = ArtifactRegistry(store)
    rollout = Rollout(reg, lambda: CFG)

    async def index(version: str, *ids: str) -> None:
        body = {"embedder": "hashing", "examples": [{"id": i} for i in ids]}
        await reg.save_candidate("bot", "index", body, M, version=version, evaluation={"offline": {}})

    await index("i1", "a", "b")
    await reg.move("bot", "index", "i1", "promoted", "seed")
    await index("i2", "a", "x")  # leaves b out: the configured share
    leaves = await rollout.begin("bot", "index", "i2", "ok")
    assert leaves.action == "canary" and (await reg.states("bot", "index")).versions["i2"].share in (None, 0.1)
    await index("i3", "a", "b", "x", "y")  # grows the canary and holds all of current: the cap is its floor
    grows = await rollout.begin("bot", "index", "i3", "ok")
    assert grows.action == "canary" and grows.share == CFG.canary_share  # the chain's share until decided
    rec = await reg.get("bot", "index", "i3")
    assert rec is not None and rec.evaluation["exposure"]["share"] == CFG.canary_max_share
    assert (await rollout.check("bot", ("index",)))[0].share == CFG.canary_max_share  # not worse: at its floor
    await reg.move("bot", "index", "i3", "promoted", "decided")
    await index("i4", "a", "b", "x", "y", "z")
    adds = await rollout.begin("bot", "index", "i4", "ok")
    assert adds.share == CFG.canary_max_share and "only adds 1 examples to current i3" in adds.reason
