"""Live latency on a one-slot upstream while evaluation replays run beside it (issue #17, F2).

Run from the repository root:

    python -m bench.live_yield [--seconds 40] [--service-ms 300] [--spread 0] [--think-min-ms 0]
                               [--think-ms 400] [--share 0.25] [--delay-share 0.1]

A simulated upstream serves one request at a time (`--service-ms` each, ± `--spread` of it drawn
per request, like llama.cpp with one slot and prompts of different lengths), in process. A live
client sends one chat call at a time through the gateway's pipeline (counted per upstream,
gateway/serve/live_load.py), pausing `--think-min-ms`..`--think-ms` between calls (a simulated user
of `bench.generalize` posts its feedback in between: ~10–50 ms). Beside it an evaluator replays
calls as fast as the evaluation gate lets it (learners/economy.py, `eval_concurrency = 2`, no rate
cap). Four arms: no evaluation; evaluation without yielding (the gate's concurrency cap only, as
before issue #17); yielding by time share only (`eval_share = --share`, `eval_live_delay_share` 1);
yielding with both rules (`eval_live_delay_share = --delay-share`, the default). Printed: live
p50 / p95, the share of live calls that waited behind a replay, and the replays done. The target:
live p50 with evaluation within 20 % of the p50 without. Prints figures only; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from gateway.config.settings import LearnerSettings, parse_settings
from gateway.learning import UpstreamActivity
from gateway.serve.live_load import LiveLoad
from gateway.serve.pipeline import Pipeline, RequestContext
from gateway.serve.runtime import build_runtime
from learners.economy import UpstreamGate

BODY = {"model": "bot", "messages": [{"role": "user", "content": "hi"}]}
REPLAY = {"model": "bot", "messages": [{"role": "user", "content": "replay"}]}


@dataclass
class ArmResult:
    """One arm's live latencies (s), how many live calls waited behind a replay, the replays done."""

    latencies: list[float]
    waited: int
    replays: int
    gate: UpstreamGate

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.latencies, n=20)[18]


async def arm(mode: str, args: argparse.Namespace) -> ArmResult:
    """One arm: "none", "noyield", "share" (`eval_share` only) or "yield" (and the delay share)
    (tests/learners/test_live_yield.py runs it small)."""
    settings = parse_settings({"providers": {"up": {"kind": "fake"}}, "models": {"m": {"provider": "up", "name": "m"}},
                               "routes": {"bot": {"variants": ["m"]}}})
    runtime = build_runtime(settings)
    provider: Any = runtime.providers["up"]
    slot, inner = asyncio.Lock(), provider.chat
    service = random.Random(2)
    holder: list[str] = [""]
    waited = 0

    async def one_slot(call: Any) -> Any:  # the upstream serves one request at a time
        nonlocal waited
        is_replay = call.body["messages"][-1]["content"] == "replay"
        if not is_replay and holder[0] == "replay":
            waited += 1
        async with slot:
            holder[0] = "replay" if is_replay else "live"
            await asyncio.sleep(args.service_ms / 1000 * (1 + service.uniform(-args.spread, args.spread)))
            holder[0] = ""
            return await inner(call)

    provider.chat = one_slot
    live = LiveLoad()

    def activity(name: str) -> UpstreamActivity:
        return UpstreamActivity(live.in_flight.get(name, 0), live.busy_total(name), live.last_end.get(name), 1,
                                live.started.get(name, 0))

    cfg = LearnerSettings(eval_concurrency=2, eval_rate_per_s=0, eval_share=args.share,
                          eval_live_delay_share=args.delay_share if mode == "yield" else 1.0)
    gate = UpstreamGate(lambda: cfg, activity if mode in ("share", "yield") else None)
    serving = Pipeline(lambda _r: None, live=live)
    latencies: list[float] = []
    replays = 0
    end = time.monotonic() + args.seconds
    rnd = random.Random(1)

    async def client() -> None:
        while time.monotonic() < end:
            began = time.perf_counter()
            await serving.chat(runtime.resolve("bot"), BODY, RequestContext(call_id=f"live{len(latencies)}"))
            latencies.append(time.perf_counter() - began)
            await asyncio.sleep(rnd.uniform(args.think_min_ms / 1000, args.think_ms / 1000))

    async def replay(k: int) -> None:
        nonlocal replays
        async with gate.slot("up"):
            await Pipeline(lambda _r: None).chat(runtime.resolve("bot"), REPLAY, RequestContext(call_id=f"eval{k}"))
        replays += 1

    async def evaluator() -> None:
        k = 0
        while time.monotonic() < end:
            await asyncio.gather(*(replay(k + j) for j in range(4)))  # a replayer with 4 cases at a time
            k += 4

    evaluating = [asyncio.create_task(evaluator())] if mode != "none" else []
    await client()
    for task in evaluating:  # replays still held back would wait out eval_live_idle_s
        task.cancel()
    await asyncio.gather(*evaluating, return_exceptions=True)
    return ArmResult(latencies, waited, replays, gate)


async def main_async(args: argparse.Namespace) -> None:
    print(f"one-slot upstream, {args.service_ms:.0f} ms ± {args.spread:.0%} per request; live client: one call "
          f"at a time, {args.think_min_ms:.0f}-{args.think_ms:.0f} ms apart; {args.seconds:.0f} s per arm")
    base = None
    for mode, label in (("none", "no evaluation"), ("noyield", "evaluation, not yielding"),
                        ("share", f"yielding, eval_share {args.share:g} only"),
                        ("yield", f"yielding, and eval_live_delay_share {args.delay_share:g}")):
        r = await arm(mode, args)
        base = base or r.p50
        print(f"  {label:40s} live p50 {r.p50 * 1000:6.0f} ms ({r.p50 / base - 1:+.0%})  p95 {r.p95 * 1000:6.0f} ms  "
              f"waited behind a replay {r.waited / len(r.latencies):4.0%}  replays {r.replays}")


def main() -> None:
    """Parse the arguments and print the three arms' figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--service-ms", type=float, default=300.0)
    p.add_argument("--spread", type=float, default=0.0)
    p.add_argument("--think-min-ms", type=float, default=0.0)
    p.add_argument("--think-ms", type=float, default=400.0)
    p.add_argument("--share", type=float, default=0.25)
    p.add_argument("--delay-share", type=float, default=0.1)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
