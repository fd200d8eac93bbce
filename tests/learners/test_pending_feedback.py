"""Feedback answered 202 (its call not readable yet) wakes its route's learner once the call can be
read, as 201 feedback does at once (gateway/capture/intake.py, learners/loop.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.capture.intake import FeedbackIntake
from gateway.store import open_store
from gateway.store.records import FeedbackRecord, new_id
from tests.conftest import base_config
from tests.store.factories import make_call


async def test_unrouted_feedback_is_counted_for_its_route_once_the_call_is_stored(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/fw.db")
    await store.migrate()
    try:
        submitted: list[FeedbackRecord] = []
        intake = FeedbackIntake(submitted.append)
        call_id = new_id("chatcmpl")
        intake.accept(None, FeedbackRecord(call_id=call_id, rating=-1))
        assert submitted and intake.new_feedback["bot"] == 0 and list(intake.pending) == [call_id]
        assert await intake.route_pending(store.get_call) == 0  # not written yet: still pending
        assert list(intake.pending) == [call_id]
        await store.insert_calls([make_call(1, id=call_id, route="bot", created_at=time.time())])
        assert await intake.route_pending(store.get_call) == 1
        assert intake.new_feedback["bot"] == 1 and not intake.pending
        # an id older than any call still on its way is let go instead of looked up forever
        intake.accept(None, FeedbackRecord(call_id="chatcmpl-" + f"{int((time.time() - 7200) * 1000):011x}"
                                           + "ab" * 12, rating=1))
        assert await intake.route_pending(store.get_call) == 0 and not intake.pending
    finally:
        await store.close()


def test_202_feedback_wakes_the_learner_when_its_call_is_written(make_gateway: Any, fake_upstream: str,
                                                                 tmp_path: Path) -> None:
    cfg = base_config(fake_upstream, tmp_path)
    cfg["store"]["log_calls"] = False  # the call is not written now: its feedback is answered 202
    cfg["learners"] = {"enabled": True, "interval_s": 0.2, "min_new_feedback": 1, "learn_on_correction": False}
    gw = make_gateway(cfg)
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": "hi"}]})
    call_id = r.json()["id"]
    fb = httpx.post(gw.v1 + "/feedback", json={"call_id": call_id, "rating": -1})
    assert fb.status_code == 202, fb.text
    assert call_id in gw.gateway.intake.pending
    before = gw.learning._last_run.get("bot", 0.0)
    time.sleep(1.0)  # the loop looks, but cannot route it yet: no cycle
    assert gw.learning._last_run.get("bot", 0.0) == before and call_id in gw.gateway.intake.pending

    async def write() -> None:  # the call arrives in the store (as after an outage's spill is replayed)
        store = open_store(gw.gateway.settings.store.url)
        try:
            await store.insert_calls([make_call(1, id=call_id, route="bot", created_at=time.time())])
        finally:
            await store.close()

    asyncio.run(write())
    deadline = time.monotonic() + 15
    while gw.learning._last_run.get("bot", 0.0) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gw.learning._last_run.get("bot", 0.0) > before, "the route's learner never ran"
    assert call_id not in gw.gateway.intake.pending
