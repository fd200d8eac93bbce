"""The writer against hostile rows and full disks: one bad row never blocks the rows around it
(NUL characters on both backends, a row refused even so), a spill re-ingest never loops on a bad
row, large calls are prepared off the event loop, and rows are held in memory when neither the
database nor the spill file takes them."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

from gateway.capture.prepare import CallPreparer
from gateway.config.settings import PrivacySettings, StoreSettings
from gateway.store.codec import CallRows
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.spill import SpillFile
from gateway.store.sql import SqlStore
from gateway.store.writer import CallWriter
from tests.store.factories import make_call, make_feedback
from tests.store.test_writer import FlakyStore


def _nul_call(i: int) -> CallRecord:
    call = make_call(i, user="eve\x00admin")
    call.request["messages"][1]["content"] = "hello\x00world " * 30  # long: stored as a blob too
    return call


async def test_a_nul_call_is_stored_and_the_rows_around_it_too(store: SqlStore, tmp_path: Path) -> None:
    # No preparer: the raw NUL reaches the database (as from an older version's spill file).
    writer = CallWriter(store, tmp_path / "spill.jsonl", batch_size=64, retry_s=3600)
    await writer.start()
    for i in range(10):
        writer.submit_call(_nul_call(i) if i == 4 else make_call(i))
    writer.submit_feedback(make_feedback("chatcmpl-000004", comment="bad\x00byte"))
    writer.submit_feedback(make_feedback("chatcmpl-000005", n=1))
    await writer.flush()
    await writer.stop()
    assert await store.count_calls() == 10 and await store.count_feedback() == 2
    stored = await store.get_call("chatcmpl-000004")
    assert stored is not None and stored.request["messages"][1]["content"].startswith("hello")
    assert not (tmp_path / "spill.jsonl").exists()  # nothing left behind for a retry loop
    stats = writer.stats
    assert (stats.quarantined, stats.spilled, stats.written) == (0, 0, 12)
    if store.dialect.name == "postgresql":  # PostgreSQL text cannot hold NUL: isolated and repaired
        assert stored.user == "eve\ufffdadmin" and "NUL characters replaced" in (stored.notes or "")
        assert stats.isolated_batches >= 1 and stats.repaired == 2
        [fb] = await store.list_feedback(call_ids=["chatcmpl-000004"])
        assert fb.comment == "bad\ufffdbyte"


async def test_the_preparer_replaces_nul_before_any_insert(store: SqlStore, tmp_path: Path) -> None:
    privacy = PrivacySettings(store_raw=True, pseudonymize_users=False)
    prep = CallPreparer(lambda: privacy, StoreSettings, lambda route, fb: None)
    writer = CallWriter(store, tmp_path / "spill.jsonl", prepare=prep)
    await writer.start()
    writer.submit_call(_nul_call(1))
    await writer.flush()
    await writer.stop()
    stored = await store.get_call("chatcmpl-000001")
    assert stored is not None and stored.user == "eve\ufffdadmin"
    assert stored.notes == "NUL characters replaced: 31"
    assert writer.stats.isolated_batches == 0  # no failed batch on either backend


async def test_reingesting_a_spill_with_a_nul_row_does_not_loop(store: SqlStore, tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append([make_call(1), _nul_call(2), make_call(3)])
    writer = CallWriter(store, spill.path)
    await writer.start()  # re-ingests at start
    await writer.stop()
    assert await store.count_calls() == 3
    assert not spill.has_data()


class RefusingStore(FlakyStore):
    """Refuses one call id as a bad row would (a data error), however often it is tried."""

    def __init__(self, inner: SqlStore, bad: str) -> None:
        super().__init__(inner)
        self.bad = bad

    async def insert_call_rows(self, rows: CallRows) -> None:
        if any(r[0] == self.bad for r in rows.calls):
            raise ValueError("invalid input value")
        await super().insert_call_rows(rows)

    async def insert_calls(self, calls: Sequence[CallRecord]) -> None:
        if any(c.id == self.bad for c in calls):
            raise ValueError("invalid input value")
        await super().insert_calls(calls)


async def test_a_row_refused_even_repaired_is_quarantined(store: SqlStore, tmp_path: Path) -> None:
    refusing = RefusingStore(store, "chatcmpl-000003")
    spill = SpillFile(tmp_path / "spill.jsonl")
    writer = CallWriter(refusing, spill.path)  # type: ignore[arg-type]
    await writer.start()
    for i in range(6):
        writer.submit_call(make_call(i))
    await writer.flush()
    await writer.stop()
    assert await store.count_calls() == 5
    assert writer.stats.quarantined == 1 and not writer.pending("chatcmpl-000003")
    assert b"chatcmpl-000003" in spill.rejected.read_bytes() and not spill.has_data()


async def test_large_calls_are_prepared_off_the_event_loop(store: SqlStore, tmp_path: Path) -> None:
    threads: dict[str, str] = {}

    def prepare(c: CallRecord) -> CallRecord:
        threads[c.id] = threading.current_thread().name
        return c

    writer = CallWriter(store, tmp_path / "spill.jsonl", prepare=prepare, offload_bytes=10_000)
    await writer.start()
    big = make_call(1, system="long policy. " * 5000)
    writer.submit_call(big)
    writer.submit_call(make_call(2))
    await writer.flush()
    await writer.stop()
    main = threading.current_thread().name
    assert threads[big.id] != main and threads["chatcmpl-000002"] == main
    assert writer.stats.offloaded == 1 and await store.count_calls() == 2


async def test_rows_are_held_in_memory_when_the_spill_file_is_not_writable(
    store: SqlStore, tmp_path: Path
) -> None:
    flaky = FlakyStore(store)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spill directory should be")
    writer = CallWriter(flaky, blocker / "spill.jsonl", retry_s=0.05, memory_rows=5)  # type: ignore[arg-type]
    await writer.start()
    flaky.down = True
    for i in range(7):
        writer.submit_call(make_call(i))
    writer.submit_feedback(make_feedback("chatcmpl-000000"))
    await writer.flush()
    stats = writer.stats
    assert (stats.held, stats.lost) == (5, 3)  # 5 kept in memory, the rest lost and counted
    flaky.down = False
    for _ in range(200):
        if writer.stats.held == 0:
            break
        await asyncio.sleep(0.02)
    await writer.stop()
    assert writer.stats.held == 0 and await store.count_calls() == 5


async def test_feedback_is_sanitised_in_the_writer(store: SqlStore, tmp_path: Path) -> None:
    privacy = PrivacySettings(user_key_env=None, user_key_path=str(tmp_path / "user.key"))
    prep = CallPreparer(lambda: privacy, StoreSettings, lambda route, fb: None)
    writer = CallWriter(store, tmp_path / "spill.jsonl", prepare=prep)
    await writer.start()
    fb = FeedbackRecord(call_id="chatcmpl-000001", comment="mail me at jo@example.com", user="jo@example.com")
    writer.submit_feedback(fb)
    await writer.flush()
    await writer.stop()
    [row] = await store.list_feedback()
    assert row.comment == "mail me at <EMAIL>"
    pseudo = prep.pseudonymizer()
    assert pseudo is not None and row.user == pseudo.user("jo@example.com") != "jo@example.com"


async def test_stored_request_and_response_are_capped(store: SqlStore, tmp_path: Path) -> None:
    privacy = PrivacySettings(store_raw=True, pseudonymize_users=False)
    settings = StoreSettings(max_stored_bytes=20_000)
    prep = CallPreparer(lambda: privacy, lambda: settings, lambda route, fb: None)
    writer = CallWriter(store, tmp_path / "spill.jsonl", prepare=prep)
    await writer.start()
    call = make_call(1)
    call.request["messages"] = [{"role": "user", "content": f"message {i} " + "x" * 100} for i in range(2000)]
    call.response = {"choices": [{"message": {"role": "assistant", "content": "y" * 100_000}}]}
    writer.submit_call(dataclasses.replace(call))
    await writer.flush()
    await writer.stop()
    stored = await store.get_call(call.id)
    assert stored is not None
    kept = stored.request["messages"]
    assert 0 < len(kept) < 2000 and kept[-1]["content"].startswith("message 1999")  # the newest kept
    content = stored.response["choices"][0]["message"]["content"]
    assert len(content) < 20_000 and content.endswith("[truncated by flywheel: 100000 characters]")
    assert "request truncated" in (stored.notes or "") and "response truncated" in (stored.notes or "")


async def test_a_request_keeps_its_newest_messages_before_it_is_queued(store: SqlStore, tmp_path: Path) -> None:
    writer = CallWriter(store, tmp_path / "spill.jsonl", max_messages=10)
    await writer.start()
    call = make_call(1)
    call.request["messages"] = [{"role": "user", "content": f"message {i}"} for i in range(50)]
    writer.submit_call(call)
    await writer.flush()
    await writer.stop()
    stored = await store.get_call(call.id)
    assert stored is not None
    assert [m["content"] for m in stored.request["messages"]] == [f"message {i}" for i in range(40, 50)]
    assert stored.notes == "request truncated: 40 of 50 messages left out"
    assert len(call.request["messages"]) == 50  # the caller's record is not modified
