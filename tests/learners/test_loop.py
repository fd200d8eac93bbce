"""The background loop: it learns once enough feedback (or a correction) arrived, and every replica
picks up the store's artifact states on its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.learners.scenario import ROUTE, TOPICS, UNSEEN, Client, config, correct_everything, truth


def wait_for(fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_a_correction_wakes_the_loop_and_a_second_replica_follows(make_gateway: Any, fake_upstream: str,
                                                                 tmp_path: Path) -> None:
    cfg = config(fake_upstream, tmp_path, enabled=True, interval_s=0.3, refresh_s=0.3, min_new_feedback=1000,
                 canary_share=0.0)
    a = Client(make_gateway(cfg).url)
    # Another replica on the same store that only serves (one replica learns; every replica refreshes).
    b = Client(make_gateway({**cfg, "learners": {**cfg["learners"], "enabled": False}}).url)
    correct_everything(a)
    index = wait_for(lambda: b.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"])
    assert index.startswith("i")
    for topic, question in UNSEEN.items():  # replica b serves what the loop learned from a's traffic
        wait_for(lambda q=question, t=topic: b.ask("reader", q)[1] == truth(t))


def test_enough_feedback_wakes_the_loop(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    cfg = config(fake_upstream, tmp_path, enabled=True, interval_s=0.3, min_new_feedback=6,
                 learn_on_correction=False, canary_share=0.0)
    gw = make_gateway(cfg)
    c = Client(gw.url)
    questions, answer = TOPICS["password"]
    call_id, _, _ = c.ask("one", questions[0])
    c.feedback(call_id, correction=answer)
    time.sleep(1.0)  # one correction, below min_new_feedback: no cycle
    assert c.get(f"/admin/routes/{ROUTE}/artifacts", kind="index")["data"] == []
    for i, q in enumerate(questions[1:]):
        call_id, _, _ = c.ask(f"u{i}", q)
        c.feedback(call_id, correction=answer)
    wait_for(lambda: c.get(f"/admin/routes/{ROUTE}/artifacts", kind="index")["data"])
    assert gw.gateway.new_feedback()[ROUTE] < 6  # the counter restarts after a cycle


def test_a_correction_wakes_the_loop_at_once_not_at_its_next_poll(make_gateway: Any, fake_upstream: str,
                                                                  tmp_path: Path, monkeypatch: Any) -> None:
    import learners.loop

    monkeypatch.setattr(learners.loop, "_POLL_S", 3600.0)  # the loop's own poll would come in an hour
    cfg = config(fake_upstream, tmp_path, enabled=True, interval_s=3600, min_new_feedback=1000, canary_share=0.0)
    c = Client(make_gateway(cfg).url)
    time.sleep(1.0)  # the loop is asleep in its wait
    correct_everything(c)
    index = wait_for(lambda: c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"], timeout=20)
    assert index.startswith("i")


def test_one_routes_long_cycle_does_not_hold_back_another_routes_learning(
        make_gateway: Any, fake_upstream: str, tmp_path: Path, monkeypatch: Any) -> None:
    import asyncio

    from learners.loop import LearningLoop

    original = LearningLoop.learn_route
    slow_started = []

    async def learn_route(self: LearningLoop, route: str, **kw: Any) -> Any:
        if route == "slow":  # a cycle replaying through a slow upstream for minutes
            slow_started.append(route)
            await asyncio.sleep(3600)
        return await original(self, route, **kw)

    monkeypatch.setattr(LearningLoop, "learn_route", learn_route)
    cfg = config(fake_upstream, tmp_path, enabled=True, interval_s=3600, min_new_feedback=1000, canary_share=0.0)
    cfg["routes"] = {"slow": dict(cfg["routes"][ROUTE]), **cfg["routes"]}  # the slow route comes first
    c = Client(make_gateway(cfg).url)
    r = c.http.post(f"{c.url}/v1/chat/completions",
                    json={"model": "slow", "messages": [{"role": "user", "content": "How do I reset my password?"}]})
    c.feedback(r.json()["id"], correction=truth("password"))
    wait_for(lambda: slow_started)
    correct_everything(c)
    index = wait_for(lambda: c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"], timeout=20)
    assert index.startswith("i") and slow_started == ["slow"]  # still in its one cycle


def test_a_correction_is_served_while_the_routes_evaluation_runs(make_gateway: Any, fake_upstream: str,
                                                                 tmp_path: Path, monkeypatch: Any) -> None:
    # the full lane's template evaluation replays for an hour; corrections still reach users
    import asyncio

    from learners.cycle import LearningCycle

    evaluating = []

    async def slow_template(self: LearningCycle, *args: Any) -> None:
        evaluating.append(self.route)
        await asyncio.sleep(3600)

    monkeypatch.setattr(LearningCycle, "_template", slow_template)
    cfg = config(fake_upstream, tmp_path, enabled=True, interval_s=3600, min_new_feedback=1000, canary_share=0.0)
    c = Client(make_gateway(cfg).url)
    correct_everything(c)
    wait_for(lambda: evaluating)  # the index step is done: retrieval raced, its index promoted
    first = c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"]
    call_id, _, _ = c.ask("late", "Which carrier brings parcels to Iceland, and at what price?")
    c.feedback(call_id, correction=truth("shipping"))
    newer = wait_for(lambda: (v := c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"]) != first and v,
                     timeout=20)
    row = next(r for r in c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["data"] if r["version"] == newer)
    assert row["evaluation"]["online_only"] and row["evaluation"]["offline"] is None  # no replays
    assert evaluating == [ROUTE]  # still in its one evaluation


def test_with_learners_on_the_embedder_loads_at_start_not_at_the_first_cycle(
        make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    # loaded beside the first corrections' live traffic, a model costs those calls seconds of CPU
    on = make_gateway(config(fake_upstream, tmp_path, enabled=True, interval_s=3600))
    wait_for(lambda: on.gateway.embedders.embed_fn() is not None, timeout=10)
    (tmp_path / "off").mkdir()
    off = make_gateway(config(fake_upstream, tmp_path / "off", enabled=False))
    time.sleep(0.3)
    assert off.gateway.embedders.embed_fn() is None  # nothing learns there: no model in memory
