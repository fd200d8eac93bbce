"""CallWriter: batching, spill and re-ingest, failure and recovery, shutdown, hooks."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from gateway.store.codec import CallRows
from gateway.store.records import CallRecord, Escalation, FeedbackRecord
from gateway.store.spill import SpillFile, decode, encode
from gateway.store.sql import SqlStore
from gateway.store.writer import CallWriter
from tests.store.factories import SYSTEM_5K, make_call, make_feedback


class FlakyStore:
    """Delegates to a real store; inserts raise while `down` (a database outage) or hang while `hang`."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.down = False
        self.hang = False
        self.insert_batches: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def _gate(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise ConnectionRefusedError("database unreachable")

    async def insert_calls(self, calls: Sequence[CallRecord]) -> None:
        await self._gate()
        self.insert_batches.append(len(calls))
        await self.inner.insert_calls(calls)

    async def insert_call_rows(self, rows: CallRows) -> None:
        await self._gate()
        self.insert_batches.append(len(rows.calls))
        await self.inner.insert_call_rows(rows)

    async def insert_feedback(self, fb: FeedbackRecord) -> None:
        await self._gate()
        await self.inner.insert_feedback(fb)

    async def insert_feedback_many(self, feedback: Sequence[FeedbackRecord]) -> None:
        await self._gate()
        await self.inner.insert_feedback_many(feedback)


async def wait_for_stat(writer: CallWriter, field: str, value: int) -> None:
    """Poll a counter (bounded: a broken writer fails the test instead of hanging it)."""
    for _ in range(1000):
        if getattr(writer.stats, field) >= value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{field} stuck at {getattr(writer.stats, field)}, wanted {value}")


async def test_batches_reach_the_store(store: SqlStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    writer = CallWriter(flaky, tmp_path / "spill.jsonl", batch_size=64)  # type: ignore[arg-type]
    await writer.start()
    for i in range(200):
        writer.submit_call(make_call(i, system=SYSTEM_5K))
    writer.submit_feedback(make_feedback("chatcmpl-000007"))
    await writer.flush()
    assert await store.count_calls() == 200
    assert await store.count_attempts() == 400
    assert await store.count_feedback() == 1
    assert sum(flaky.insert_batches) == 200 and max(flaky.insert_batches) == 64  # rows really were batched
    assert not writer.pending("chatcmpl-000007")
    stats = writer.stats
    assert (stats.queued, stats.written, stats.spilled, stats.failed_batches) == (201, 201, 0, 0)
    await writer.stop()
    assert not (tmp_path / "spill.jsonl").exists()


async def test_pending_until_written(store: SqlStore, tmp_path: Path) -> None:
    writer = CallWriter(store, tmp_path / "spill.jsonl")
    writer.submit_call(make_call(1))
    assert writer.pending("chatcmpl-000001")
    assert not writer.pending("chatcmpl-000002")
    await writer.start()
    await writer.flush()
    assert not writer.pending("chatcmpl-000001")
    assert await store.get_call("chatcmpl-000001") is not None
    await writer.stop()


async def test_queued_calls_hold_nothing_the_garbage_collector_walks(store: SqlStore, tmp_path: Path) -> None:
    # Live records in the queue were promoted through every GC generation, and each full pass
    # walked them all: 5-25 ms stalls of the event loop under load.
    writer = CallWriter(store, tmp_path / "spill.jsonl")
    gc.collect()
    before = len(gc.get_objects())
    for i in range(500):
        writer.submit_call(make_call(i))
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # not ~10 containers per queued call
    await writer.start()
    await writer.flush()
    assert await store.count_calls() == 500
    await writer.stop()


async def test_a_batch_in_flight_holds_rows_the_garbage_collector_skips(store: SqlStore, tmp_path: Path) -> None:
    # Decoded records alive until the insert made logging trigger 20x as many collections as serving.
    tracked: list[int] = []

    class Counting(FlakyStore):
        async def insert_call_rows(self, rows: CallRows) -> None:
            gc.collect()
            tracked.append(len(gc.get_objects()))
            await super().insert_call_rows(rows)

    writer = CallWriter(Counting(store), tmp_path / "spill.jsonl", batch_size=500)  # type: ignore[arg-type]
    await writer.start()
    for warm_up in (999, 998):  # connections, statements (the roll-ups' too) and caches warmed up
        writer.submit_call(make_call(warm_up))
        await writer.flush()
    for i in range(500):
        writer.submit_call(make_call(i, system=SYSTEM_5K))
    await writer.flush()
    assert await store.count_calls() == 502
    assert tracked[2] - tracked[1] < 100  # not ~10 containers per call in the batch
    await writer.stop()


async def test_a_call_queued_when_its_user_is_forgotten_is_not_stored(store: SqlStore, tmp_path: Path) -> None:
    # `flywheel forget` runs in its own process and cannot flush a running gateway's queue.
    writer = CallWriter(store, tmp_path / "spill.jsonl", flush_ms=60_000)
    await writer.start()
    writer.submit_call(make_call(1, user="alice", created_at=time.time()))
    writer.submit_call(make_call(2, user="bob", created_at=time.time()))
    assert await store.forget_user("alice") == (0, 0)  # nothing stored yet: the call is queued
    await writer.flush()
    assert [c.user for c in await store.list_calls()] == ["bob"]
    assert not writer.pending("chatcmpl-000001")
    await writer.stop()


async def test_flush_writes_at_once_instead_of_waiting_for_the_window(store: SqlStore, tmp_path: Path) -> None:
    writer = CallWriter(store, tmp_path / "spill.jsonl", flush_ms=600_000)
    await writer.start()
    await asyncio.sleep(0.01)  # the drain loop now waits for rows

    async def submit_and_flush() -> None:
        writer.submit_call(make_call(1))
        # awaited in this task, flush() runs before the drain loop wakes up to the new row
        await writer.flush()

    await asyncio.wait_for(submit_and_flush(), 10)
    assert await store.count_calls() == 1
    await writer.stop()


async def test_queue_full_spills_and_next_start_reingests(store: SqlStore, tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    writer = CallWriter(store, spill, max_queue=10, retry_s=3600)
    await writer.start()
    for i in range(100):  # no await in between: the queue cannot drain meanwhile
        writer.submit_call(make_call(i))
    writer.submit_feedback(make_feedback("chatcmpl-000099"))
    assert writer.pending("chatcmpl-000099")
    assert writer.depth == 101
    await writer.flush()
    assert writer.depth == 0
    await writer.stop()
    assert (writer.stats.queued, writer.stats.written, writer.stats.spilled) == (10, 10, 91)
    assert await store.count_calls() == 10
    assert len(spill.read_bytes().splitlines()) == 91

    again = CallWriter(store, spill)
    await again.start()
    assert again.stats.reingested == 91
    assert await store.count_calls() == 100
    assert await store.count_attempts() == 200
    assert await store.count_feedback() == 1
    assert not SpillFile(spill).has_data()
    await again.stop()


async def test_database_outage_spills_then_recovers(store: SqlStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    flaky.down = True
    writer = CallWriter(flaky, tmp_path / "spill.jsonl", batch_size=16, retry_s=0.05)  # type: ignore[arg-type]
    await writer.start()
    for i in range(50):
        writer.submit_call(make_call(i, system=SYSTEM_5K))
    for i in range(5):
        writer.submit_feedback(make_feedback(f"chatcmpl-{i:06d}", i))
    await writer.flush()
    stats = writer.stats
    assert stats.spilled == 55 and stats.written == 0 and stats.failed_batches >= 1
    assert await store.count_calls() == 0
    assert writer.pending("chatcmpl-000049")  # spilled is not stored: feedback may still refer to it

    flaky.down = False
    await wait_for_stat(writer, "reingested", 55)
    assert await store.count_calls() == 50
    assert await store.get_call("chatcmpl-000049") == make_call(49, system=SYSTEM_5K)  # as it was submitted
    assert await store.count_feedback() == 5
    assert not writer.pending("chatcmpl-000049")
    writer.submit_call(make_call(60))  # and the normal path works again
    await writer.flush()
    assert await store.count_calls() == 51
    await writer.stop()
    assert writer.stats.reingested == 55


async def test_reingest_failure_keeps_the_file_and_counts_exactly(store: SqlStore, tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    SpillFile(spill).append([make_call(i) for i in range(30)])
    flaky = FlakyStore(store)
    flaky.down = True
    writer = CallWriter(flaky, spill, batch_size=8, retry_s=3600)  # type: ignore[arg-type]
    await writer.start()  # database down: the rows stay spilled
    assert writer.stats.reingested == 0
    assert SpillFile(spill).has_data()
    await writer.stop()
    flaky.down = False
    again = CallWriter(flaky, spill, batch_size=8)  # type: ignore[arg-type]
    await again.start()
    assert again.stats.reingested == 30
    assert await store.count_calls() == 30
    await again.stop()


async def test_stop_drains_the_queue(store: SqlStore, tmp_path: Path) -> None:
    writer = CallWriter(store, tmp_path / "spill.jsonl", batch_size=1000, flush_ms=60_000)
    await writer.start()
    for i in range(100):
        writer.submit_call(make_call(i))
    await writer.stop()  # must not wait out flush_ms
    assert await store.count_calls() == 100
    assert writer.stats.written == 100
    writer.submit_call(make_call(200))  # after stop: spilled, not lost
    assert writer.stats.spilled == 1
    assert len((tmp_path / "spill.jsonl").read_bytes().splitlines()) == 1


async def test_stop_with_database_down_spills_what_is_queued(store: SqlStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    flaky.down = True
    spill = tmp_path / "spill.jsonl"
    writer = CallWriter(flaky, spill, retry_s=3600)  # type: ignore[arg-type]
    await writer.start()
    for i in range(40):
        writer.submit_call(make_call(i))
    await writer.stop()
    assert writer.stats.spilled == 40
    flaky.down = False
    again = CallWriter(flaky, spill)  # type: ignore[arg-type]
    await again.start()
    assert again.stats.reingested == 40 and await store.count_calls() == 40
    await again.stop()


async def test_stop_timeout_spills_a_hanging_batch(store: SqlStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    flaky.hang = True
    writer = CallWriter(flaky, tmp_path / "spill.jsonl", flush_ms=1)  # type: ignore[arg-type]
    await writer.start()
    for i in range(20):
        writer.submit_call(make_call(i))
    await asyncio.sleep(0.05)  # let the batch reach the hanging insert
    await writer.stop(timeout_s=0.2)
    assert writer.stats.spilled == 20
    assert len((tmp_path / "spill.jsonl").read_bytes().splitlines()) == 20


async def test_stop_timeout_while_a_batch_is_being_scrubbed_spills_each_row_once(
    store: SqlStore, tmp_path: Path
) -> None:
    prepared: list[str] = []

    def slow_scrub(c: CallRecord) -> CallRecord:
        time.sleep(0.005)  # 8 calls a slice: ~40 ms between two yields to the event loop
        prepared.append(c.id)
        return dataclasses.replace(c, error="scrubbed")

    writer = CallWriter(store, tmp_path / "spill.jsonl", flush_ms=1, prepare=slow_scrub)
    await writer.start()
    for i in range(64):
        writer.submit_call(make_call(i))
    await asyncio.sleep(0.02)  # the batch is being scrubbed
    await writer.stop(timeout_s=0.05)
    assert await store.count_calls() == 0
    lines = (tmp_path / "spill.jsonl").read_bytes().splitlines()
    spilled = [decode(line) for line in lines]
    assert sorted(r.id for r in spilled) == sorted(make_call(i).id for i in range(64))  # each once
    assert all(isinstance(r, CallRecord) and r.error == "scrubbed" for r in spilled)
    assert sorted(prepared) == sorted(r.id for r in spilled)  # none scrubbed twice
    assert writer.stats.spilled == 64


async def test_prepare_runs_before_storing_and_its_failures_are_kept_aside(
    store: SqlStore, tmp_path: Path
) -> None:
    def scrub(c: CallRecord) -> CallRecord:
        if c.id.endswith("3"):
            raise RuntimeError("scrubber bug")
        return dataclasses.replace(c, user="[redacted]")

    spill = SpillFile(tmp_path / "spill.jsonl")
    writer = CallWriter(store, spill.path, prepare=scrub)
    await writer.start()
    for i in range(5):
        writer.submit_call(make_call(i))
    await writer.flush()
    await writer.stop()
    assert {c.user for c in await store.list_calls()} == {"[redacted]"}
    assert await store.count_calls() == 4
    assert writer.stats.rejected == 1
    assert not writer.pending("chatcmpl-000003")
    assert spill.rejected.read_bytes() == encode(make_call(3))


async def test_spilled_rows_are_prepared_rows(store: SqlStore, tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    writer = CallWriter(
        store, spill.path, max_queue=1, retry_s=3600, prepare=lambda c: dataclasses.replace(c, user="anon")
    )
    await writer.start()
    for i in range(5):
        writer.submit_call(make_call(i, user="alice"))
    await writer.flush()
    await writer.stop()
    assert b"alice" not in spill.path.read_bytes()
    again = CallWriter(store, spill.path)
    await again.start()
    await again.stop()
    assert {c.user for c in await store.list_calls()} == {"anon"}
    assert await store.count_calls() == 5


async def test_torn_spill_line_is_kept_aside(store: SqlStore, tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append([make_call(i) for i in range(3)])
    with spill.path.open("ab") as f:
        f.write(encode(make_call(4))[:40])  # a crash mid-append
    writer = CallWriter(store, spill.path)
    await writer.start()
    await writer.stop()
    assert writer.stats.reingested == 3
    assert await store.count_calls() == 3
    assert spill.rejected.read_bytes() == encode(make_call(4))[:40] + b"\n"
    assert not spill.has_data()


async def test_submit_never_raises(store: SqlStore, tmp_path: Path) -> None:
    writer = CallWriter(store, tmp_path / "spill.jsonl")
    writer.submit_call(None)  # type: ignore[arg-type]
    writer.submit_feedback(None)  # type: ignore[arg-type]
    await writer.start()
    await writer.stop()


def test_a_spill_line_decodes_to_the_record_it_encodes() -> None:
    call = make_call(5, escalation=Escalation("small", "small", cost_usd=1e-7, same_answer=True))
    fb = make_feedback(call.id)
    assert decode(encode(call)) == call and decode(encode(fb)) == fb


def test_a_spill_line_from_another_version_keeps_the_fields_this_one_knows() -> None:
    call = make_call(6)
    obj = orjson.loads(encode(call))
    del obj["record"]["escalation"], obj["record"]["ttft_ms"]  # an older gateway's line
    obj["record"]["future_column"] = 1  # a newer gateway's line
    obj["record"]["attempts"][0]["future_flag"] = True
    assert decode(orjson.dumps(obj)) == call
