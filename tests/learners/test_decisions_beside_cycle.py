"""Canary decisions do not wait for a learning cycle (issue #17, F1): a clearly better canary is
promoted by the loop's decision task while a slow cycle of the same route runs, and a cycle that
starts a canary meanwhile queues it behind the running one instead of starting a second."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any

from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.records import CallRecord, FeedbackRecord
from learners.cycle import LearningCycle
from learners.report import LearnReport
from tests.learners.scenario import ROUTE, Client, config, correct_everything

_ids = itertools.count()


def wait_for(fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_clearly_better_canary_is_promoted_while_a_slow_cycle_runs(
        make_gateway: Any, fake_upstream: str, tmp_path: Path, monkeypatch: Any) -> None:
    cfg = config(fake_upstream, tmp_path, enabled=True, interval_s=0.3, min_new_feedback=1_000_000,
                 learn_on_correction=False, canary_share=0.1, canary_min_feedback=5)
    gw = make_gateway(cfg)
    c = Client(gw.url)
    correct_everything(c)
    report = c.learn()
    canary = next(x["version"] for x in report["candidates"] if x["kind"] == "index" and x["outcome"] == "canary")
    url = gw.gateway.settings.store.url

    async def evidence() -> None:  # the canary answers well, current badly, since the canary began
        store = open_store(url)
        try:
            since = (await ArtifactRegistry(store).states(ROUTE, "index")).versions[canary].since
            for i in range(30):
                ours = i % 3 == 0
                cid = f"ev{next(_ids):05d}"
                await store.insert_calls([CallRecord(id=cid, route=ROUTE, variant="model-a", model="a",
                                                     created_at=since + 1 + i,
                                                     index_version=canary if ours else None)])
                await store.insert_feedback(FeedbackRecord(cid, rating=1 if ours else -1, created_at=since + 2 + i))
        finally:
            await store.close()

    release, running = threading.Event(), threading.Event()
    original = LearningCycle.learn

    async def slow_learn(self: LearningCycle) -> LearnReport:  # a cycle whose evaluation takes long
        running.set()
        while not release.is_set():
            await asyncio.sleep(0.05)
        return await original(self)

    monkeypatch.setattr(LearningCycle, "learn", slow_learn)
    cycle = threading.Thread(target=c.learn)  # POST /admin/learn: holds the route's lock until released
    cycle.start()
    try:
        assert running.wait(30)
        asyncio.run(evidence())  # after the cycle's own canary check: only the decision task can see it

        def state() -> str:
            async def get() -> str:
                store = open_store(url)
                try:
                    return (await ArtifactRegistry(store).states(ROUTE, "index")).versions[canary].state
                finally:
                    await store.close()
            return asyncio.run(get())

        wait_for(lambda: state() == "promoted")
        assert not release.is_set() and cycle.is_alive()  # decided while the cycle was still running
    finally:
        release.set()
        cycle.join(60)
    assert not cycle.is_alive()


async def test_two_concurrent_begins_start_one_canary_and_queue_the_other(tmp_path: Path) -> None:
    from gateway.config.settings import LearnerSettings
    from gateway.store.artifacts import Manifest
    from learners.rollout import Rollout

    store = open_store(f"sqlite:///{tmp_path}/rollout.db")
    await store.migrate()
    try:
        reg = ArtifactRegistry(store)
        m = Manifest(produced_by="test", note="because")
        for v in ("i1", "i2"):
            await reg.save_candidate("bot", "index", {"v": v}, m, version=v)
        locks: dict[str, asyncio.Lock] = {}
        cfg = LearnerSettings(canary_share=0.1)
        # a cycle's rollout and the decision task's (fenced) one share the loop's per-route lock
        a = Rollout(reg, lambda: cfg, lambda r: locks.setdefault(r, asyncio.Lock()))
        b = Rollout(reg, lambda: cfg, lambda r: locks.setdefault(r, asyncio.Lock()))
        first, second = await asyncio.gather(a.begin("bot", "index", "i1", "ok"), b.begin("bot", "index", "i2", "ok"))
        assert sorted([first.action, second.action]) == ["canary", "queued"]
        states = await reg.states("bot", "index")
        assert [v for v, s in states.versions.items() if s.state == "canary"] == [states.canary]
    finally:
        await store.close()
