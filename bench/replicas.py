"""Many replicas, one brain: PostgreSQL-backed gateways sharing one Redis, as processes on loopback.

    python -m bench.replicas [--hammer-s 60] [--replicas 3] [--quick]

Starts one fake upstream and N gateway processes (`flywheel serve`) on one PostgreSQL store (a
schema of its own in the `test` database) and the local Redis (a key prefix of its own), the load
generator spreading its workers over them, and prints:

1. throughput with 1, 2 and 3 replicas serving (the others idle), a key with limits on Redis;
2. a key with rpm = 600 and tpm = 20,000 hammered at concurrency 64 across all replicas for 60 s:
   requests and tokens admitted vs the limits (target: <= 1 % over, >= 95 % of the binding limit);
3. learning cycles per route per interval across replicas (target: exactly one), with a
   correction posted to a different replica every interval, each interval longer than one cycle
   on this store (timed first): duplicate cycles and missed intervals counted apart;
4. the lease holder SIGKILLed mid-load: calls answered vs calls stored (the killed replica may lose
   its journal window, `[store] journal_ms`: a survivor replays its journal from the shared
   `journal_dir`), and the time until another replica holds the lease (target: <= 2 x `[limits] lease_s`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import re
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.loadgen import Service, cpu_s, free_port, make_session, run_load, spawn, wait_http
from gateway.http.auth import hash_key

REPO = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
ADMIN = "bench-replicas-admin"
LEASE_S = 5.0
FLUSH_MS = 200
PROMPT = "Where is my parcel? It was due on Tuesday and the tracking page has not changed since."


@dataclass
class Cluster:
    upstream: Service
    gateways: list[Service]
    schema: str
    prefix: str
    logs: Path  # gateway-<i>.log, and the shared data folder (journals, the user key)

    @property
    def store_url(self) -> str:
        return f"{PG}?search_path={self.schema}"


def write_config(tmp: Path, i: int, upstream: str, store_url: str, prefix: str) -> Path:
    """One replica's config.toml: the same store, Redis and keys; its own spill file."""
    def key(name: str) -> str:
        return f'hash = "sha256:{hash_key("sk-" + name)}"'

    text = f"""
[server]
host = "127.0.0.1"
[store]
url = "{store_url}"
spill_path = "{tmp}/spill-{i}.jsonl"
flush_ms = {FLUSH_MS}
[limits]
redis_url = "{REDIS}"
prefix = "{prefix}"
lease_s = {LEASE_S}
[providers.up]
kind = "openai"
base_url = "{upstream}/v1"
[models.m]
provider = "up"
name = "fake-0"
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
[routes.bench]
variants = ["m"]
[auth]
admin_key_env = "FLYWHEEL_ADMIN_KEY"
[auth.keys.load]
{key("load")}
rpm = 100000000
tpm = 1000000000
[auth.keys.hammer]
{key("hammer")}
rpm = 600
tpm = 20000
[learners]
enabled = {"false" if os.environ.get("BENCH_NO_LEARNING") else "true"}
interval_s = 3
min_new_feedback = 1000000
learn_on_correction = true
embedder = "hashing"
refresh_s = 2
min_samples = 1000
"""
    path = tmp / f"config-{i}.toml"
    path.write_text(text)
    return path


async def start(n: int, tmp: Path) -> Cluster:
    schema, prefix = f"bench_replicas_{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    port = free_port()
    upstream = spawn(["-m", "gateway.providers.fakes.server", "--port", str(port)], port=port,
                     log_path=tmp / "upstream.log", cwd=REPO)
    wait_http(upstream, "/v1/models")
    cluster = Cluster(upstream, [], schema, prefix, tmp)
    for i in range(n):
        cfg = write_config(tmp, i, upstream.url, cluster.store_url, prefix)
        p = free_port()
        gw = spawn(["-m", "flywheel.cli", "--config", str(cfg), "serve", "--port", str(p)], port=p,
                   log_path=tmp / f"gateway-{i}.log", cwd=REPO, env={"FLYWHEEL_ADMIN_KEY": ADMIN})
        wait_http(gw, "/readyz", timeout_s=60)
        cluster.gateways.append(gw)
    return cluster


async def stop(cluster: Cluster) -> None:
    for svc in [*cluster.gateways, cluster.upstream]:
        svc.stop()
    conn = await asyncpg.connect(PG)
    await conn.execute(f"DROP SCHEMA {cluster.schema} CASCADE")
    await conn.close()
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(REDIS)
    keys = [k async for k in r.scan_iter(f"{cluster.prefix}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()


def body(i: int, max_tokens: int | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"model": "bench", "messages": [{"role": "user", "content": f"#{i} {PROMPT}"}]}
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    return b


async def metric(session: aiohttp.ClientSession, gw: Service, pattern: str) -> float:
    async with session.get(gw.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"}) as r:
        text = await r.text()
    m = re.search(pattern + r" ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# -- 0. what metrics cost per call -----------------------------------------------------------------

def metrics_cost(n: int = 200_000) -> None:
    """CPU per finished call of the gateway's metrics (CallMetrics.observe), in this process."""
    from gateway.observability.metrics import CallMetrics
    from gateway.store.records import Attempt, CallRecord

    m = CallMetrics()
    records = [CallRecord(id=f"c{i}", route=f"r{i % 4}", variant="v", model="m", key_id=f"k{i % 8}", status=200,
                          latency_ms=12.5, ttft_ms=None, prompt_tokens=30, completion_tokens=12, cost_usd=1e-5,
                          attempts=[Attempt("m", "up", 200, None, 12.0)]) for i in range(64)]
    for r in records:
        m.observe(r)
    t0 = time.process_time()
    for i in range(n):
        m.observe(records[i & 63])
    per = (time.process_time() - t0) / n * 1e6
    print(f"\n0. metrics: {per:.2f} us CPU per call (CallMetrics.observe: requests, latency, tokens, cost, retries; "
          "target <= 15 us)")


# -- 1. throughput ----------------------------------------------------------------------------------

async def throughput(cluster: Cluster, requests: int, concurrency: int) -> None:
    print(f"\n1. throughput: {requests} requests at concurrency {concurrency}, key with limits on Redis")
    bodies = [body(i) for i in range(64)]
    headers = {"authorization": "Bearer sk-load"}
    for n in range(1, len(cluster.gateways) + 1):
        serving = cluster.gateways[:n]
        per = max(1, concurrency // n)
        await asyncio.gather(*(run_load(gw.url + "/v1/chat/completions", bodies, requests=100, concurrency=per,
                                        headers=headers) for gw in serving))  # warm-up
        t0, cpu0 = time.perf_counter(), sum(cpu_s(gw.pid) for gw in serving)
        results = await asyncio.gather(*(run_load(gw.url + "/v1/chat/completions", bodies, requests=requests // n,
                                                  concurrency=per, headers=headers) for gw in serving))
        elapsed = time.perf_counter() - t0
        cpu = sum(cpu_s(gw.pid) for gw in serving) - cpu0
        ok = sum(r.ok for r in results)
        p99 = max(r.percentile_ms(99) for r in results)
        print(f"   {n} replica(s): {ok / elapsed:7.0f} req/s   ok {ok}/{sum(r.requests for r in results)}   "
              f"p99 {p99:.1f} ms   gateway CPU {cpu / max(ok, 1) * 1e6:.0f} us/request   "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


# -- 2. exact limits --------------------------------------------------------------------------------

async def hammer(cluster: Cluster, seconds: float, concurrency: int) -> None:
    rpm, tpm = 600, 20_000
    print(f"\n2. key with rpm={rpm}, tpm={tpm} hammered at concurrency {concurrency} across "
          f"{len(cluster.gateways)} replicas for {seconds:g} s")
    admitted = tokens = refused = other = 0
    deadline = time.monotonic() + seconds
    counter = itertools.count()
    gws = cluster.gateways

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal admitted, tokens, refused, other, deadline
        while time.monotonic() < deadline:
            i = next(counter)
            sent = time.monotonic()
            async with session.post(gws[i % len(gws)].url + "/v1/chat/completions", json=body(i, 40),
                                    headers={"authorization": "Bearer sk-hammer"}) as r:
                data = await r.read()
                if r.status == 200:
                    if admitted == 0:
                        # The limit is a sliding minute from the first admission: stop sending 1 s before
                        # it rolls over, so the run measures one window (not the next one's first calls).
                        deadline = min(deadline, sent + min(seconds, 60.0) - 1.0)
                    admitted += 1
                    m = re.search(rb'"total_tokens":(\d+)', data)
                    tokens += int(m.group(1)) if m else 0
                elif r.status == 429:
                    refused += 1
                else:
                    other += 1

    async with make_session(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    window = math.ceil(seconds / 60 - 1e-9)  # a sliding minute: a run of up to 60 s may use one full limit
    print(f"   requests admitted {admitted} of {rpm * window:.0f} allowed ({admitted / (rpm * window):.1%}); "
          f"tokens used {tokens} of {tpm * window:.0f} ({tokens / (tpm * window):.1%}); "
          f"429s {refused}; other {other}")
    binding = max(admitted / (rpm * window), tokens / (tpm * window))
    over = max(admitted / (rpm * window), tokens / (tpm * window)) - 1
    print(f"   binding limit used {binding:.1%} (target >= 95%); over the limit by "
          f"{max(0.0, over):.1%} (target <= 1%)")


# -- 3. one learner ---------------------------------------------------------------------------------

async def learning(cluster: Cluster, intervals: int) -> None:
    poll = 3.0  # [learners] interval_s: the leader looks for new corrections this often
    async with make_session(8) as session:
        leaders = [await metric(session, gw, "flywheel_learner_leader") for gw in cluster.gateways]
        leader = cluster.gateways[leaders.index(1.0) if 1.0 in leaders else 0]
        # one cycle on this store first (on demand, on the leader), so each watched interval outlasts a
        # cycle: an interval shorter than a cycle cannot hold one cycle, whatever the lease does
        queued = [await metric(session, gw, "flywheel_writer_queue_depth") for gw in cluster.gateways]
        t0 = time.perf_counter()
        async with session.post(leader.url + "/admin/learn", json={"route": "bench"},
                                headers={"authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200, await r.text()
            report = await r.json()
        cycle_s = time.perf_counter() - t0
        interval = max(poll, cycle_s + poll + 1.0)
        print(f"\n3. learning cycles across {len(cluster.gateways)} replicas over {intervals} intervals of "
              f"{interval:.1f} s (a correction to another replica each interval; one cycle on this store took "
              f"{cycle_s:.1f} s, {report.get('duration_s', 0):.1f} s of it learning, the rest waiting for the "
              f"writer to store what was queued: {[int(q) for q in queued]} rows per replica)")
        before = [await metric(session, gw, r'flywheel_learner_cycles_total\{route="bench"\}')
                  for gw in cluster.gateways]
        started = time.perf_counter()
        for k in range(intervals):
            gw = cluster.gateways[k % len(cluster.gateways)]
            async with session.post(gw.url + "/v1/chat/completions", json=body(10_000 + k),
                                    headers={"authorization": "Bearer sk-load"}) as r:
                call_id = (await r.json())["id"]
            await asyncio.sleep(FLUSH_MS / 1000 * 2)
            async with session.post(gw.url + "/v1/feedback", json={"call_id": call_id, "correction": f"fix {k}"},
                                    headers={"authorization": "Bearer sk-load"}) as r:
                assert r.status in (201, 202), await r.text()
            await asyncio.sleep(max(0.0, started + (k + 1) * interval - time.perf_counter()))
        after = [await metric(session, gw, r'flywheel_learner_cycles_total\{route="bench"\}')
                 for gw in cluster.gateways]
        leaders = [await metric(session, gw, "flywheel_learner_leader") for gw in cluster.gateways]
    cycles = [int(a - b) for a, b in zip(after, before, strict=True)]
    held = [c for c, lead in zip(cycles, leaders, strict=True) if lead == 1.0]
    on_leader = held[0] if held else 0
    duplicate = sum(cycles) - on_leader + max(0, on_leader - intervals)
    missed = max(0, intervals - on_leader)
    print(f"   cycles per replica {cycles} (leader: {[int(x) for x in leaders]}); "
          f"{sum(cycles) / intervals:.2f} cycles per interval for route bench (target: 1); "
          f"duplicate cycles {duplicate}, missed intervals {missed} (without the lease every replica would run "
          f"its own)")


# -- 4. SIGKILL --------------------------------------------------------------------------------------

async def kill_one(cluster: Cluster, seconds: float, concurrency: int) -> None:
    gws = cluster.gateways
    print(f"\n4. the lease holder SIGKILLed mid-load ({len(gws)} replicas, concurrency {concurrency}, {seconds:g} s)")
    async with make_session(concurrency) as session:
        leaders = [await metric(session, gw, "flywheel_learner_leader") for gw in gws]
        victim = leaders.index(1.0) if 1.0 in leaders else 0
        answered: dict[int, list[str]] = {i: [] for i in range(len(gws))}
        alive = set(range(len(gws)))
        deadline = time.monotonic() + seconds
        counter = itertools.count()

        async def worker() -> None:
            while time.monotonic() < deadline:
                i = next(counter)
                targets = sorted(alive)
                g = targets[i % len(targets)]
                try:
                    async with session.post(gws[g].url + "/v1/chat/completions", json=body(i),
                                            headers={"authorization": "Bearer sk-load"}) as r:
                        await r.read()
                        if r.status == 200:
                            answered[g].append(r.headers["x-flywheel-call-id"])
                except aiohttp.ClientError:
                    pass  # the killed replica's connections

        depth = [0.0]
        killed_at = [0.0]

        async def killer() -> float:
            # the lease key names its holder: watch it in Redis (gateways' /metrics lag under load)
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(REDIS)
            key = f"{cluster.prefix}:lease:learner"
            await asyncio.sleep(seconds / 3)
            before = await r.get(key)
            depth[0] = await metric(session, gws[victim], "flywheel_writer_queue_depth")
            os.kill(gws[victim].pid, signal.SIGKILL)
            killed = killed_at[0] = time.monotonic()
            alive.discard(victim)
            try:
                while (now := await r.get(key)) is None or now == before:
                    await asyncio.sleep(0.02)
                return time.monotonic() - killed
            finally:
                await r.aclose()

        results = await asyncio.gather(killer(), *(worker() for _ in range(concurrency)))
    takeover = results[0]
    conn = await asyncpg.connect(cluster.store_url)
    ids = [i for calls in answered.values() for i in calls]
    stored: set[str] = set()
    # until the survivors' writers have caught up, and had three retry rounds (5 s each) to find the
    # killed replica's journal unchanged
    stable, settle_deadline = 0, time.monotonic() + 60
    while stable < 15 and time.monotonic() < settle_deadline:
        await asyncio.sleep(1.0)
        now = {r[0] for r in await conn.fetch("SELECT id FROM calls WHERE id = ANY($1::text[])", ids)}
        stable = stable + 1 if now == stored and len(now) < len(ids) else (15 if len(now) == len(ids) else 0)
        stored = now
    await conn.close()
    for g, calls in answered.items():
        lost = sum(1 for c in calls if c not in stored)
        tag = " (SIGKILLed)" if g == victim else ""
        print(f"   replica {g}{tag}: answered {len(calls)}, stored {len(calls) - lost}, lost {lost}")
    print(f"   all stored {time.monotonic() - killed_at[0]:.1f} s after the kill" if len(stored) == len(ids) else
          f"   not all stored {time.monotonic() - killed_at[0]:.1f} s after the kill")
    replayed = sum(int(n) for i in range(len(gws)) if i != victim
                   for n in re.findall(r"replayed (\d+) rows from", (cluster.logs / f"gateway-{i}.log").read_text()))
    print(f"   the killed replica's writer queue held {depth[0]:.0f} rows when it was killed "
          f"(flush_ms {FLUSH_MS}); the survivors replayed {replayed} rows from its journal (journal_ms 100)")
    print(f"   lease taken over {takeover:.2f} s after the kill (lease_s {LEASE_S:g}; target <= {2 * LEASE_S:g} s)")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as d:
        tmp = Path(args.keep) if args.keep else Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        cluster = await start(args.replicas, tmp)
        print(f"{args.replicas} gateways on PostgreSQL (schema {cluster.schema}) and Redis (prefix {cluster.prefix}) "
              f"up in {time.perf_counter() - t0:.1f} s")
        try:
            if "0" in args.only:
                metrics_cost()
            if "1" in args.only:
                await throughput(cluster, args.requests, args.concurrency)
            if "2" in args.only:
                await hammer(cluster, args.hammer_s, 64)
            if "3" in args.only:
                await learning(cluster, args.intervals)
            if "4" in args.only:
                await kill_one(cluster, args.kill_s, args.concurrency)
        finally:
            await stop(cluster)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--requests", type=int, default=3000, help="throughput: requests per configuration")
    p.add_argument("--concurrency", type=int, default=48)
    p.add_argument("--hammer-s", type=float, default=60.0)
    p.add_argument("--intervals", type=int, default=5, help="learning intervals watched")
    p.add_argument("--kill-s", type=float, default=15.0)
    p.add_argument("--keep", help="a directory for the configs and logs (kept)")
    p.add_argument("--only", default="01234", help="which parts to run (digits 0-4)")
    p.add_argument("--quick", action="store_true", help="shorter: 1000 requests, a 20 s hammer")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.hammer_s, args.intervals, args.kill_s = 1000, 20.0, 3, 9.0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
