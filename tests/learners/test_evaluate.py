"""The offline gate and the evaluation budget."""

from __future__ import annotations

import pytest

from gateway.settings import LearnerSettings
from gateway.store.records import CallRecord
from learners.evaluate import ArmResult, Budget, BudgetExhausted, CaseResult, gate

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
