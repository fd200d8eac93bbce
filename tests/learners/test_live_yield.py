"""Evaluation yields to live traffic on an upstream with few slots (issue #17, F2): serving counts its
live calls per upstream, no replay starts while live calls fill the slots, and while live traffic is
present replays keep to `eval_share` of the upstream's time (checked on a simulated clock) and
delay at most `eval_live_delay_share` of live calls."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import httpx

from bench.live_yield import arm
from gateway.config.settings import LearnerSettings, parse_settings
from gateway.learning import UpstreamActivity
from gateway.serve.live_load import LiveLoad, default_slots
from gateway.serve.pipeline import Pipeline, RequestContext
from gateway.serve.runtime import build_runtime
from learners.economy import UpstreamGate

SETTINGS = parse_settings({"providers": {"up": {"kind": "fake", "latency_ms": 200}},
                           "models": {"m": {"provider": "up", "name": "m"}},
                           "routes": {"bot": {"variants": ["m"]}}})
BODY = {"model": "bot", "messages": [{"role": "user", "content": "hello"}]}


def activity(live: LiveLoad, slots: int | None) -> Any:
    return lambda name: UpstreamActivity(live.in_flight.get(name, 0), live.busy_total(name),
                                         live.last_end.get(name), slots)


async def until(cond: Any) -> None:
    async with asyncio.timeout(10):
        while not cond():
            await asyncio.sleep(0.005)


async def test_the_live_pipeline_counts_its_calls_per_upstream_streams_until_their_last_chunk() -> None:
    live = LiveLoad()
    runtime = build_runtime(SETTINGS)
    pipeline = Pipeline(lambda _record: None, live=live)
    task = asyncio.create_task(pipeline.chat(runtime.resolve("bot"), BODY, RequestContext(call_id="c1")))
    await until(lambda: live.in_flight.get("up") == 1)
    await task
    assert live.in_flight["up"] == 0 and live.last_end["up"] > 0 and live.busy_s["up"] > 0.1
    stream, _ = await pipeline.chat_stream(runtime.resolve("bot"), {**BODY, "stream": True},
                                           RequestContext(call_id="c2"))
    seen = []
    async for _chunk in stream:
        seen.append(live.in_flight["up"])
    assert seen and set(seen) == {1} and live.in_flight["up"] == 0
    replay = Pipeline(lambda _record: None)  # replays run through pipelines of their own: not counted
    await replay.chat(runtime.resolve("bot"), BODY, RequestContext(call_id="c3"))
    assert live.in_flight["up"] == 0


async def test_a_replay_waits_while_a_live_call_is_in_flight_on_a_one_slot_upstream_and_starts_after() -> None:
    live = LiveLoad()
    runtime = build_runtime(SETTINGS)
    gate = UpstreamGate(lambda: LearnerSettings(eval_rate_per_s=0), activity(live, slots=1))
    call = asyncio.create_task(Pipeline(lambda _r: None, live=live).chat(runtime.resolve("bot"), BODY,
                                                                         RequestContext(call_id="c1")))
    await until(lambda: live.in_flight.get("up") == 1)
    live_at_start: list[int] = []

    async def replay() -> None:
        async with gate.slot("up"):
            live_at_start.append(live.in_flight["up"])

    await asyncio.gather(call, replay())
    assert live_at_start == [0]  # asked while the live call ran: started only once it was answered
    assert gate.yielded_s["up"] > 0.05


async def test_on_a_many_slot_upstream_replays_do_not_wait_for_live_calls() -> None:
    live = LiveLoad()
    live.enter("up")  # a live call in flight for the whole test
    gate = UpstreamGate(lambda: LearnerSettings(eval_rate_per_s=0), activity(live, slots=None))
    async with asyncio.timeout(5), gate.slot("up"):
        assert live.in_flight["up"] == 1
    assert "up" not in gate.yielded_s


class SimClock:
    """A clock that only moves when someone sleeps (the gate's polls, a replay's duration)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        self.t += dt
        await asyncio.sleep(0)


async def replays_on(share: float, live_present: bool, n: int = 40, replay_s: float = 2.0) -> tuple[float, float]:
    """Run `n` replays of `replay_s` simulated seconds; returns (evaluation's busy time, elapsed)."""
    clock = SimClock()
    cfg = LearnerSettings(eval_rate_per_s=0, eval_concurrency=2, eval_share=share, eval_live_idle_s=5.0)
    # live traffic: a live call ended just now (present) or never (idle)
    gate = UpstreamGate(lambda: cfg, lambda _n: UpstreamActivity(0, 0.0, clock.t if live_present else None, 1),
                        clock=clock, sleep=clock.sleep)
    start = clock.t

    async def replay() -> None:
        async with gate.slot("up"):
            await clock.sleep(replay_s)

    await asyncio.gather(*(replay() for _ in range(n)))
    assert gate.peak["up"] == 1  # one slot: replays never stack up in front of a live call
    return n * replay_s, clock.t - start


async def test_while_live_traffic_is_present_replays_keep_to_their_share_of_the_upstream() -> None:
    busy, elapsed = await replays_on(0.25, live_present=True)
    assert busy / elapsed <= 0.25 + 0.01, (busy, elapsed)
    assert busy / elapsed >= 0.2  # and the share is used, evaluation is not starved either
    busy, elapsed = await replays_on(0.5, live_present=True)
    assert 0.45 <= busy / elapsed <= 0.51, (busy, elapsed)
    busy, elapsed = await replays_on(0.25, live_present=False)  # no live traffic: the whole upstream
    assert busy / elapsed >= 0.95, (busy, elapsed)


def test_a_local_upstream_is_taken_for_one_slot_unless_its_config_says_otherwise(
        make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    assert default_slots("http://127.0.0.1:8080/v1") == 1 and default_slots("http://localhost:1/v1") == 1
    assert default_slots("http://10.1.2.3/v1") == 1 and default_slots("https://api.openai.com/v1") is None
    from tests.conftest import base_config

    cfg = base_config(fake_upstream, tmp_path)
    cfg["providers"]["cloudish"] = {"kind": "openai", "base_url": "https://api.example.com/v1", "slots": 8}
    gw = make_gateway(cfg)
    r = httpx.post(f"{gw.v1}/chat/completions", json={"model": "model-a", "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
    assert r.status_code == 200, r.text
    up = gw.gateway.live_activity("up")
    assert up.slots == 1 and up.in_flight == 0 and up.last_end is not None and up.busy_s > 0
    assert gw.gateway.live_activity("cloudish").slots == 8
    assert gw.gateway.live_activity("model-a") == up and up.key == "up"  # a route's name: its providers together


async def test_a_route_and_its_one_provider_are_one_upstream_to_the_gate() -> None:
    # a judge replay is asked under the route's name, a pinned case replay under its provider's
    gate = UpstreamGate(lambda: LearnerSettings(eval_rate_per_s=0, eval_concurrency=2),
                        lambda _name: UpstreamActivity(0, 0.0, None, 1, 0, key="up"))

    async def replay(name: str) -> None:
        async with gate.slot(name):
            await asyncio.sleep(0.05)

    await asyncio.gather(replay("bot"), replay("up"), replay("bot"))
    assert gate.peak == {"up": 1}  # one slot: never two replays on it, whatever they were asked under


def small(share: float, delay_share: float, gap_s: float, seconds: float = 1.5) -> argparse.Namespace:
    """bench.live_yield's arms, small: 30 ms a request on one slot, live calls `gap_s` apart."""
    return argparse.Namespace(seconds=seconds, service_ms=30.0, spread=0.0, think_min_ms=gap_s * 1000,
                              think_ms=gap_s * 1000, share=share, delay_share=delay_share)


async def test_replays_delay_at_most_their_share_of_live_calls_sent_back_to_back() -> None:
    # the next live call follows the last answer within ~the gate's poll: a replay started in the
    # gap always delays it, so before rule (c) a third of live calls or more waited behind one
    r = await arm("share", small(1.0, 0.1, gap_s=0.015))  # eval_share 1: no time share either
    assert r.waited >= 0.25 * len(r.latencies), (len(r.latencies), r.waited, r.replays)
    r = await arm("yield", small(1.0, 0.1, gap_s=0.015))
    assert r.gate.delayed.get("up", 0) >= r.waited  # the gate sees every live call it delayed
    assert r.waited <= 0.1 * len(r.latencies) + 1, (len(r.latencies), r.waited, r.replays)
    assert r.replays >= 2  # and evaluation goes on


async def test_replays_that_fit_the_gaps_between_live_calls_are_not_held_to_the_delay_share() -> None:
    r = await arm("yield", small(1.0, 0.1, gap_s=0.12, seconds=3.0))
    assert r.waited <= 0.1 * len(r.latencies) + 1, (len(r.latencies), r.waited, r.replays)
    # several replays fit a gap; one that runs into the next live call holds the rest back for a while
    assert r.replays >= 0.4 * len(r.latencies), (len(r.latencies), r.waited, r.replays)
