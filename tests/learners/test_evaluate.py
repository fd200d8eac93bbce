"""The offline gate, the evaluation budget, and what a replay runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.settings import LearnerSettings, RetrievalSettings, parse_settings
from gateway.serve.augment import ServingSet
from gateway.serve.runtime import build_runtime
from gateway.store.records import CallRecord
from learners.dataset import EvalCase
from learners.evaluate import ArmResult, Budget, BudgetExhausted, CaseResult, Replayer, gate
from learners.scoring import build_metric
from tests.routing.conftest import HARD, routing_config

CFG = LearnerSettings(min_samples=4, min_slice_samples=2, tolerance=0.1, margin=0.0)


def arm(scores: list[float], segments: list[str | None] | None = None) -> ArmResult:
    segs = segments or [None] * len(scores)
    return ArmResult(tuple(CaseResult(f"c{i}", segs[i], s, "") for i, s in enumerate(scores)), True)


def test_better_candidate_passes() -> None:
    ev = gate(arm([0.2] * 5), arm([0.8] * 5), CFG, "token_f1", Budget(100))
    assert ev.passed and ev.verdict == "passed" and ev.n == 5
    assert ev.delta == pytest.approx(0.6) and "0.20 -> 0.80" in ev.reason


def test_too_few_samples_is_insufficient() -> None:
    ev = gate(arm([0.0] * 3), arm([1.0] * 3), CFG, "token_f1", Budget(100))
    assert not ev.passed and ev.verdict == "insufficient" and "need 4" in ev.reason


def test_worse_candidate_is_a_regression_and_a_tie_depends_on_require_gain() -> None:
    assert gate(arm([0.9] * 4), arm([0.5] * 4), CFG, "m", Budget(9)).verdict == "regression"
    assert gate(arm([0.5] * 4), arm([0.5] * 4), CFG, "m", Budget(9)).passed
    tie = gate(arm([0.5] * 4), arm([0.5] * 4), CFG, "m", Budget(9), require_gain=True)
    assert tie.verdict == "no_gain" and "needs > +0.00" in tie.reason


def test_margin_must_be_met() -> None:
    cfg = CFG.model_copy(update={"margin": 0.2})
    ev = gate(arm([0.5] * 4), arm([0.6] * 4), cfg, "m", Budget(9))
    assert ev.verdict == "no_gain" and not ev.passed


def test_a_regressing_slice_blocks_an_overall_gain() -> None:
    segs: list[str | None] = ["key=a", "key=a", "key=b", "key=b", "key=b", "key=b"]
    ev = gate(arm([0.8, 0.8, 0.0, 0.0, 0.0, 0.0], segs), arm([0.3, 0.3, 1.0, 1.0, 1.0, 1.0], segs), CFG, "m",
              Budget(9))
    assert not ev.passed and ev.verdict == "regression" and "slice key=a" in ev.reason
    assert [(s.segment, s.n) for s in ev.slices] == [("key=a", 2), ("key=b", 4)]


def test_only_paired_cases_count() -> None:
    cur = arm([0.0] * 6)
    cand = ArmResult(cur.results[:4], False)
    assert gate(cur, cand, CFG, "m", Budget(9)).n == 4


def test_budget_counts_calls_and_cost() -> None:
    b = Budget(max_calls=3, max_cost_usd=0.01)
    b.reserve()
    b.sink(CallRecord(id="x", route="r", variant="v", model="m", cost_usd=0.02))
    assert b.exhausted
    with pytest.raises(BudgetExhausted):
        b.reserve()
    unlimited_cost = Budget(max_calls=2)
    unlimited_cost.sink(CallRecord(id="x", route="r", variant="v", model="m", cost_usd=5.0))
    unlimited_cost.reserve()
    unlimited_cost.reserve()
    with pytest.raises(BudgetExhausted):
        unlimited_cost.reserve()


async def test_replays_are_pinned_to_the_variant_that_answered_the_logged_call(tmp_path: Path) -> None:
    """A route that picks at random (weighted, not sticky) would give current and candidate
    different models for the same case; each replay runs on the logged call's variant instead."""
    cfg = routing_config(tmp_path)
    cfg["routes"]["smart"]["policy"] = {"kind": "weighted", "weights": {"cheap": 1, "strong": 1}, "sticky": False}
    runtime = build_runtime(parse_settings(cfg))
    replayer = Replayer(lambda: runtime, "smart", build_metric("exact"), Budget(100), RetrievalSettings(), None)
    question = f"Solve the {HARD} of x"  # the cheap fake fails it, the strong one echoes it
    cases = [EvalCase(f"c{i}", ({"role": "user", "content": question},), question, f"You said: {question}", {},
                      variant="cheap" if i % 2 else "strong") for i in range(16)]
    arm = await replayer.run(ServingSet(), cases)
    assert [r.score for r in arm.results] == [0.0 if i % 2 else 1.0 for i in range(16)]
    assert all(r.record is not None and r.record.variant == c.variant for r, c in zip(arm.results, cases, strict=True))
    everything_strong = await replayer.run(ServingSet(), cases, variant="strong")
    assert {r.score for r in everything_strong.results} == {1.0}
