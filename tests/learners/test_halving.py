"""Successive halving (learners/halving.py): a clearly worse arm is dropped after the first rung, the
survivors reach every case, and the search replays fewer cases than a full replay of every arm
for the same winner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from learners.dataset import EvalCase
from learners.evaluate import ArmResult, CaseResult
from learners.halving import clearly_worse, first_slice, successive_halving

CASES = tuple(EvalCase(f"c{i}", ({"role": "user", "content": f"q{i}"},), f"q{i}", "x", {}) for i in range(40))
# each arm's score on each case: "good" right on 9 of 10, "ok" on 7 of 10, "bad" on none
RIGHT = {"good": lambda i: i % 10 != 3, "ok": lambda i: i % 10 < 7, "bad": lambda i: False}


class Replays:
    """A scripted replay that counts the case replays asked of it per arm."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}

    async def __call__(self, label: str, cases: Sequence[EvalCase]) -> ArmResult:
        self.asked[label] = self.asked.get(label, 0) + len(cases)
        right = RIGHT[label.split("#")[0]]
        return ArmResult(tuple(CaseResult(c.call_id, None, 1.0 if right(int(c.call_id[1:])) else 0.0, "")
                               for c in cases), True)


async def full_winner(labels: list[str]) -> tuple[str, int]:
    replay = Replays()
    means = {label: (await replay(label, CASES)).mean for label in labels}
    return max(labels, key=lambda a: means[a]), sum(replay.asked.values())


async def test_a_clearly_worse_arm_is_dropped_after_the_first_rung() -> None:
    replay = Replays()
    h = await successive_halving(["good", "bad"], replay, CASES, first=first_slice(len(CASES), 5))
    assert h.rungs[0].cases == 5 and h.rungs[0].dropped == ("bad",)
    assert replay.asked == {"good": 40, "bad": 5}  # the survivor reaches every case, the loser stops at 5
    assert h.survivors == ("good",) and len(h.results["good"].results) == 40
    assert h.saved == 35


async def test_halving_picks_the_full_replays_winner_for_less() -> None:
    labels = ["ok#1", "bad#1", "good#1", "ok#2", "bad#2"]
    winner, full_spend = await full_winner(labels)
    replay = Replays()
    h = await successive_halving(labels, replay, CASES, first=5)
    best = max(h.survivors, key=lambda a: h.results[a].mean)
    assert best == winner == "good#1"
    spent = sum(replay.asked.values())
    assert spent < full_spend and h.saved == full_spend - spent
    assert "bad#1" in h.rungs[0].dropped and "bad#2" in h.rungs[0].dropped


async def test_equal_arms_both_survive_and_a_lone_arm_replays_everything() -> None:
    replay = Replays()
    h = await successive_halving(["good#a", "good#b"], replay, CASES, first=5)
    assert h.survivors == ("good#a", "good#b") and replay.asked["good#a"] == 40
    lone = await successive_halving(["ok"], Replays(), CASES, first=5)
    assert len(lone.results["ok"].results) == 40 and lone.saved == 0


def test_clearly_worse_needs_a_lead_beyond_the_noise() -> None:
    def arm(scores: list[float]) -> tuple[CaseResult, ...]:
        return tuple(CaseResult(f"c{i}", None, s, "") for i, s in enumerate(scores))

    assert clearly_worse(arm([1, 1, 1, 1, 1]), arm([0, 0, 0, 0, 0]))
    assert not clearly_worse(arm([1, 0, 1, 0, 1]), arm([0, 1, 0, 1, 0]))  # ahead by 0.2 on 5 noisy cases
    assert not clearly_worse(arm([0, 0, 0]), arm([1, 1, 1]))  # ahead is never worse


def test_a_cycle_reports_its_evaluation_spend(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    from rich.console import Console

    from flywheel.cli.learn import print_report
    from tests.learners.scenario import Client, config, correct_everything

    c = Client(make_gateway(config(fake_upstream, tmp_path)).url)
    correct_everything(c)
    report = c.learn()
    searches = {line.split(":")[0] for line in report["eval_halving"]}
    assert "index" in searches, report["eval_halving"]  # the retrieval settings race on held-out calls
    rungs = next(line for line in report["eval_halving"] if line.startswith("index"))
    assert "cases:" in rungs and rungs.endswith("case replays saved")
    assert report["eval_saved"] >= 0 and report["eval_calls"] > 0
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert f"evaluation spend: {report['eval_calls']} calls replayed, {report['eval_cached']} from the cache" in text
    assert f"{report['eval_saved']} case replays saved by successive halving" in text
