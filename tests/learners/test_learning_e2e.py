"""The whole loop on the fake provider, through a real gateway: traffic with corrections -> learn ->
candidates -> offline evaluation -> canary -> promoted; a paraphrase of a corrected question then
gets the corrected answer. A poisoned batch of corrections is rejected or rolled back, and the route
keeps its quality. Every decision shows in `flywheel prompts log` with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flywheel.cli import main
from tests.learners.scenario import (
    POISON,
    ROUTE,
    TOPICS,
    UNSEEN,
    Client,
    config,
    correct_everything,
    judged_traffic,
    truth,
    write_toml,
)


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {c["version"]: c["outcome"] for c in report["candidates"]} | {
        d["version"]: d["action"] for d in report["rollout"]}


def decided(c: Client, report: dict[str, Any], kind: str) -> dict[str, str]:
    """Each version's state now (else the report's outcome). Canary decisions also run in the
    learning loop's own task (learners/loop.py), so a decision may land between two reports."""
    rows = c.get(f"/admin/routes/{ROUTE}/templates", kind=kind)["data"]
    return outcomes(report) | {r["version"]: r["state"] for r in rows}


def learn_and_promote(c: Client) -> None:
    """Corrections -> candidates in canary -> judged traffic -> promoted."""
    assert correct_everything(c) == sum(len(q) for q, _ in TOPICS.values())
    first = c.learn()
    assert first["examples"] == 18 and first["heldout"] >= 2
    index = next(x for x in first["candidates"] if x["kind"] == "index")
    assert index["outcome"] == "canary", index
    assert index["evaluation"]["delta"] > 0.3 and index["evaluation"]["verdict"] == "passed"
    judged_traffic(c, 30, "phase2")
    second = c.learn()
    assert decided(c, second, "index")[index["version"]] == "promoted", second["rollout"]
    listing = c.get(f"/admin/routes/{ROUTE}/templates", kind="index")
    assert listing["current"] == index["version"] and listing["canary"] is None


def test_corrections_are_learned_and_a_paraphrase_gets_the_corrected_answer(
    make_gateway: Any, fake_upstream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = config(fake_upstream, tmp_path)
    gw = make_gateway(cfg)
    c = Client(gw.url)
    _, before, r = c.ask("someone", UNSEEN["returns"])
    assert before == f"You said: {UNSEEN['returns']}"
    assert r.headers["x-flywheel-route"] == ROUTE
    learn_and_promote(c)
    for topic, question in UNSEEN.items():
        for user in ("new-1", "new-2", "new-3"):
            _, answer, _ = c.ask(user, question)
            assert answer == truth(topic), (topic, user, answer)
    templates = c.get(f"/admin/routes/{ROUTE}/templates")
    states = {row["version"]: row["state"] for row in templates["data"]}
    assert states["t0"] == "promoted"  # the seed, promoted on first start
    assert any(row["parent"] == "t0" and row["evaluation"] for row in templates["data"] if row["version"] != "t0")

    config_path = write_toml(cfg, tmp_path / "config.toml")  # the CLI checks the route is configured
    assert main(["--config", str(config_path), "prompts", "log", ROUTE, "--width", "300"]) == 0
    log = capsys.readouterr().out
    assert "seed template from" in log
    assert "candidate -> canary" in log and "canary at 50%: offline token_f1" in log
    assert "canary -> promoted" in log and "online: canary" in log


def test_poisoned_corrections_are_rejected_or_rolled_back(
    make_gateway: Any, fake_upstream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = config(fake_upstream, tmp_path)
    gw = make_gateway(cfg)
    c = Client(gw.url)
    learn_and_promote(c)
    good_index = c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"]
    # One attacker asks about returns in every wording and "corrects" every answer wrongly. (With
    # four of six wordings a third of the canary's returns answers were wrong: worse by about the
    # tolerance, a toss-up at the evidence bound, not the clear poisoning this test is about.)
    for i, q in enumerate([*TOPICS["returns"][0], "Return an item: how long do I have?"]):
        call_id, _, _ = c.ask(f"mallory-{i}", q)
        c.feedback(call_id, correction=POISON)
    report = c.learn()
    poisoned = {x["version"]: x for x in report["candidates"] if x["kind"] == "index"}
    assert poisoned, report
    (version,) = poisoned
    for round_ in range(4):  # an evaluated pass leads to a canary: real users judge it
        if decided(c, report, "index").get(version) in ("rejected", "rolled_back"):
            break
        judged_traffic(c, 40, f"judge{round_}")
        report = c.learn()
    assert decided(c, report, "index")[version] in ("rejected", "rolled_back"), report
    assert c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"] == good_index
    for topic, question in UNSEEN.items():  # quality kept, for every user
        for user in ("after-1", "after-2", "after-3", "after-4"):
            assert c.ask(user, question)[1] == truth(topic)
    again = c.learn()  # the blocked examples are not proposed again
    assert all(x["kind"] != "index" for x in again["candidates"]), again["candidates"]

    config_path = write_toml(cfg, tmp_path / "config.toml")  # the CLI checks the route is configured
    assert main(["--config", str(config_path), "prompts", "log", ROUTE, "--kind", "index", "--width", "300"]) == 0
    log = capsys.readouterr().out
    assert f"{version}" in log and ("-> rejected" in log or "-> rolled_back" in log)
    assert "worse by more than" in log or "offline token_f1" in log
