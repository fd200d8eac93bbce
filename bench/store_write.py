"""Write throughput and on-disk size of the call log, through the batched writer.

Inserts N realistic calls (2 attempts each, a shared 2 KB system prompt, varied user
messages and answers) into each backend via `CallWriter`, and prints rows/s, the request
path's cost per `submit_call`, bytes per call on disk, and the time to read 1,000 calls back.

    python bench/store_write.py                    # 20,000 calls, sqlite and postgres
    python bench/store_write.py --rows 5000 --backend sqlite

PostgreSQL: a uniquely named database is created on --pg-url's server and dropped after.
Bytes per call: file size / rows for SQLite (after close, WAL checkpointed); the sum of
pg_total_relation_size over the store's tables for PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from gateway.store import open_store
from gateway.store.records import Attempt, CallRecord, new_id
from gateway.store.writer import CallWriter

SYSTEM = ("You are the support assistant of Example Corp. Answer politely, cite the policy. " * 30)[:2048]
WORDS = [
    "refund",
    "order",
    "shipping",
    "invoice",
    "account",
    "password",
    "delivery",
    "late",
    "broken",
    "warranty",
    "cancel",
    "upgrade",
    "plan",
]


def make_calls(n: int, seed: int = 7) -> list[CallRecord]:
    """n calls that look like a support bot's traffic."""
    rng = random.Random(seed)
    t0 = time.time() - n
    calls = []
    for i in range(n):
        question = " ".join(rng.choices(WORDS, k=rng.randint(15, 50)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(40, 120)))
        created = t0 + i
        calls.append(
            CallRecord(
                id=new_id("chatcmpl"),
                route="support-bot",
                variant=rng.choice(["small", "large"]),
                model="small",
                created_at=created,
                key_id="team-a",
                user=f"user-{rng.randint(1, 500)}",
                session_id=f"sess-{rng.randint(1, 2000)}",
                template_version="t3",
                policy_reason="weighted 90/10",
                choice_probability=0.9,
                request={
                    "model": "support-bot",
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": question},
                    ],
                    "temperature": 0.3,
                },
                response={
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 600, "completion_tokens": 90, "total_tokens": 690},
                },
                prompt_tokens=600,
                completion_tokens=90,
                cost_usd=0.00015,
                latency_ms=rng.uniform(200, 900),
                attempts=[
                    Attempt("small", "openai", 503, "upstream 503", rng.uniform(5, 50), created),
                    Attempt("small", "openai", 200, None, rng.uniform(200, 900), created + 0.05),
                ],
            )
        )
    return calls


@dataclass
class Result:
    backend: str
    rows: int
    seconds: float
    submit_us: float
    bytes_on_disk: int
    read_1000_ms: float
    spilled: int


async def run(url: str, calls: list[CallRecord], spill_dir: Path) -> tuple[float, float, float, int]:
    """(seconds to write all, µs per submit, ms to list 1,000 calls, rows spilled)."""
    store = open_store(url)
    await store.migrate()
    writer = CallWriter(store, spill_dir / "spill.jsonl", max_queue=len(calls) + 1)
    await writer.start()
    start = time.perf_counter()
    for c in calls:
        writer.submit_call(c)
    submitted = time.perf_counter()
    await writer.flush()
    elapsed = time.perf_counter() - start
    await writer.stop()
    assert await store.count_calls() == len(calls) - writer.stats.spilled
    t = time.perf_counter()
    listed = await store.list_calls(limit=1000)
    read_ms = (time.perf_counter() - t) * 1000
    assert listed[0].request["messages"][0]["content"] == SYSTEM
    await store.close()
    return elapsed, (submitted - start) / len(calls) * 1e6, read_ms, writer.stats.spilled


async def bench_sqlite(calls: list[CallRecord]) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "flywheel.db"
        seconds, submit_us, read_ms, spilled = await run(f"sqlite:///{db}", calls, Path(tmp))
        size = sum(p.stat().st_size for p in Path(tmp).glob("flywheel.db*"))
    return Result("sqlite", len(calls), seconds, submit_us, size, read_ms, spilled)


async def bench_postgres(calls: list[CallRecord], server_url: str) -> Result:
    name = f"flywheel_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlsplit(server_url)._replace(path=f"/{name}").geturl()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, submit_us, read_ms, spilled = await run(url, calls, Path(tmp))
        con = await asyncpg.connect(url)
        size = await con.fetchval(
            "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'"
        )
        await con.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return Result("postgres", len(calls), seconds, submit_us, int(size), read_ms, spilled)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    calls = make_calls(args.rows)
    raw = sum(len(str(c.request)) + len(str(c.response)) for c in calls) / len(calls)
    print(f"{args.rows} calls, 2 attempts each, ~{raw / 1024:.1f} KB of request+response text per call")
    results = []
    if args.backend in ("sqlite", "both"):
        results.append(await bench_sqlite(calls))
    if args.backend in ("postgres", "both"):
        results.append(await bench_postgres(calls, args.pg_url))
    header = f"{'backend':<10}{'rows/s':>10}{'submit µs':>11}{'bytes/call':>12}{'list 1000 ms':>14}"
    print(header + f"{'spilled':>9}")
    for r in results:
        print(
            f"{r.backend:<10}{r.rows / r.seconds:>10,.0f}{r.submit_us:>11.2f}"
            f"{r.bytes_on_disk / r.rows:>12,.0f}{r.read_1000_ms:>14.1f}{r.spilled:>9}"
        )


if __name__ == "__main__":
    asyncio.run(main())
