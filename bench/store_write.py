"""Write throughput and on-disk size of the call log, through the batched writer.

Inserts N realistic calls (2 attempts each, a shared 2 KB system prompt, varied user
messages and answers) into each backend via `CallWriter`, and prints rows/s, the request
path's cost per `submit_call`, bytes per call on disk, and the time to read 1,000 calls back.
`--feedback F` also submits F feedback rows per call (each some calls after its call, as a
user's rating or an inferred signal arrives), so that feedback-heavy batches are measured too.
The last columns are the store's write time (its call and feedback inserts, summed over the
batches) and the share of it spent keeping the hourly roll-ups (gateway/store/rollups.py).

    python bench/store_write.py                    # 20,000 calls, sqlite and postgres
    python bench/store_write.py --rows 5000 --backend sqlite
    python -m bench.store_write --rows 50000 --feedback 1    # as many feedback rows as calls

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

from gateway.store import open_store, rollups
from gateway.store.records import Attempt, CallRecord, FeedbackRecord, new_id
from gateway.store.sql import SqlStore
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


FEEDBACK_LAG = 300  # a call's feedback is submitted this many calls after it (usually a later batch)


def make_feedback(calls: list[CallRecord], per_call: float, seed: int = 11) -> list[list[FeedbackRecord]]:
    """Feedback rows to submit after each call: `per_call` on average, on calls FEEDBACK_LAG earlier."""
    rng = random.Random(seed)
    after: list[list[FeedbackRecord]] = [[] for _ in calls]
    total = round(per_call * len(calls))
    for k in range(total):
        target = calls[k * len(calls) // total]
        rating, score = rng.choice([(1, None), (-1, None), (None, rng.random()), (1, 0.9)])
        fb = FeedbackRecord(target.id, created_at=target.created_at + 1, rating=rating, score=score,
                            correction="a better answer" if rng.random() < 0.1 else None,
                            user=target.user, source="inferred" if score is not None else "user")
        after[min(len(calls) - 1, k * len(calls) // total + FEEDBACK_LAG)].append(fb)
    return after


class Timed:
    """Seconds spent in the store's inserts and, within them, in the roll-up hooks (the bench's own
    wrappers around the module functions; the store calls them through the module)."""

    STORE = ("insert_call_rows", "insert_feedback_many")
    ROLLUPS = ("add_calls", "add_feedback")

    def __init__(self) -> None:
        self.store_s = 0.0
        self.rollups_s = 0.0
        self._saved: list[tuple[object, str, object]] = []

    def _wrap(self, owner: object, name: str, field: str) -> None:
        fn = getattr(owner, name)

        async def timed(*args: object, **kwargs: object) -> object:
            t = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                setattr(self, field, getattr(self, field) + time.perf_counter() - t)

        self._saved.append((owner, name, fn))
        setattr(owner, name, timed)

    def __enter__(self) -> Timed:
        for name in self.STORE:
            self._wrap(SqlStore, name, "store_s")
        for name in self.ROLLUPS:
            self._wrap(rollups, name, "rollups_s")
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)


@dataclass
class Result:
    backend: str
    rows: int
    feedback: int
    seconds: float
    submit_us: float
    bytes_on_disk: int
    read_1000_ms: float
    spilled: int
    store_s: float
    rollups_s: float


@dataclass
class Run:
    seconds: float
    submit_us: float
    read_1000_ms: float
    spilled: int
    store_s: float
    rollups_s: float


async def run(url: str, calls: list[CallRecord], feedback: list[list[FeedbackRecord]], spill_dir: Path) -> Run:
    """Write every call (and its feedback) through the writer; time it and the store's share."""
    store = open_store(url)
    await store.migrate()
    n_feedback = sum(len(f) for f in feedback)
    writer = CallWriter(store, spill_dir / "spill.jsonl", max_queue=len(calls) + n_feedback + 1)
    await writer.start()
    with Timed() as timed:
        start = time.perf_counter()
        for c, fbs in zip(calls, feedback, strict=True):
            writer.submit_call(c)
            for fb in fbs:
                writer.submit_feedback(fb)
        submitted = time.perf_counter()
        await writer.flush()
        elapsed = time.perf_counter() - start
    await writer.stop()
    assert await store.count_calls() == len(calls) - writer.stats.spilled
    assert not n_feedback or await store.count_feedback() == n_feedback - writer.stats.spilled
    t = time.perf_counter()
    listed = await store.list_calls(limit=1000)
    read_ms = (time.perf_counter() - t) * 1000
    assert listed[0].request["messages"][0]["content"] == SYSTEM
    await store.close()
    return Run(elapsed, (submitted - start) / len(calls) * 1e6, read_ms, writer.stats.spilled, timed.store_s,
               timed.rollups_s)


def _result(backend: str, calls: list[CallRecord], feedback: list[list[FeedbackRecord]], r: Run,
            size: int) -> Result:
    return Result(backend, len(calls), sum(len(f) for f in feedback), r.seconds, r.submit_us, size, r.read_1000_ms,
                  r.spilled, r.store_s, r.rollups_s)


async def bench_sqlite(calls: list[CallRecord], feedback: list[list[FeedbackRecord]]) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "flywheel.db"
        r = await run(f"sqlite:///{db}", calls, feedback, Path(tmp))
        size = sum(p.stat().st_size for p in Path(tmp).glob("flywheel.db*"))
    return _result("sqlite", calls, feedback, r, size)


async def bench_postgres(calls: list[CallRecord], feedback: list[list[FeedbackRecord]], server_url: str) -> Result:
    name = f"flywheel_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlsplit(server_url)._replace(path=f"/{name}").geturl()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = await run(url, calls, feedback, Path(tmp))
        con = await asyncpg.connect(url)
        size = await con.fetchval(
            "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'"
        )
        await con.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return _result("postgres", calls, feedback, r, int(size))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--feedback", type=float, default=0.0, help="feedback rows per call (default 0)")
    args = parser.parse_args()
    calls = make_calls(args.rows)
    feedback = make_feedback(calls, args.feedback)
    raw = sum(len(str(c.request)) + len(str(c.response)) for c in calls) / len(calls)
    print(f"{args.rows} calls, 2 attempts each, ~{raw / 1024:.1f} KB of request+response text per call, "
          f"{sum(len(f) for f in feedback)} feedback rows; load average {os.getloadavg()[0]:.2f}")
    results = []
    if args.backend in ("sqlite", "both"):
        results.append(await bench_sqlite(calls, feedback))
    if args.backend in ("postgres", "both"):
        results.append(await bench_postgres(calls, feedback, args.pg_url))
    # rows/s: calls and feedback rows written per second; store s: time inside the store's inserts;
    # roll-ups: the part of it spent in the roll-up hooks.
    header = f"{'backend':<10}{'rows/s':>10}{'submit µs':>11}{'bytes/call':>12}{'list 1000 ms':>14}"
    print(header + f"{'spilled':>9}{'store s':>9}{'roll-ups':>10}")
    for r in results:
        print(
            f"{r.backend:<10}{(r.rows + r.feedback) / r.seconds:>10,.0f}{r.submit_us:>11.2f}"
            f"{r.bytes_on_disk / r.rows:>12,.0f}{r.read_1000_ms:>14.1f}{r.spilled:>9}"
            f"{r.store_s:>9.2f}{r.rollups_s / max(r.store_s, 1e-9):>10.1%}"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
