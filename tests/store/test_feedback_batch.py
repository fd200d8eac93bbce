"""Feedback stored in bulk (one statement per batch) keeps row-by-row semantics on both backends:
repeated and known ids are skipped and never counted twice in the roll-ups, a bad row is still
isolated by the writer, and retention deletes feedback whose call never arrived."""

from __future__ import annotations

from pathlib import Path

from gateway.store import rollups
from gateway.store.records import FeedbackRecord
from gateway.store.sql import SqlStore
from gateway.store.writer import CallWriter
from tests.store.factories import T0, make_call, make_feedback
from tests.store.test_rollups import _check


async def _feedback_total(store: SqlStore) -> int:
    table = await _check(store)  # the roll-ups equal an aggregation from scratch
    return int(sum(v[rollups.VALUE_COLUMNS.index("feedback")] for v in table.values()))


async def _waiting(store: SqlStore) -> list[str]:
    async with store._read() as conn:
        return sorted(r[0] for r in await conn.fetch("SELECT call_id FROM rollup_waiting"))


async def test_repeated_ids_in_one_batch_are_stored_and_counted_once(store: SqlStore) -> None:
    await store.insert_calls([make_call(i) for i in range(3)])
    first = make_feedback("chatcmpl-000000", rating=1, comment="first")
    batch = [first, make_feedback("chatcmpl-000001"), make_feedback("chatcmpl-000000", rating=-1, comment="again"),
             make_feedback("chatcmpl-000002", n=1), make_feedback("chatcmpl-000001")]
    await store.insert_feedback_many(batch)
    stored = {f.id: f for f in await store.list_feedback()}
    assert len(stored) == 3
    assert (stored[first.id].rating, stored[first.id].comment) == (1, "first")  # the first of an id wins
    assert await _feedback_total(store) == 3


async def test_a_batch_with_an_already_stored_id_adds_only_the_new_rows(store: SqlStore) -> None:
    await store.insert_calls([make_call(i) for i in range(4)])
    known = make_feedback("chatcmpl-000000", comment="kept")
    await store.insert_feedback(known)
    early = make_feedback("chatcmpl-later", n=7)  # its call is not stored yet
    batch = [make_feedback("chatcmpl-000001"), make_feedback("chatcmpl-000000", comment="replayed"),
             make_feedback("chatcmpl-000002"), early, make_feedback("chatcmpl-000003")]
    await store.insert_feedback_many(batch)
    assert await store.count_feedback() == 5
    [row] = await store.list_feedback(call_ids=["chatcmpl-000000"])
    assert row.comment == "kept"
    assert await _feedback_total(store) == 4 and await _waiting(store) == ["chatcmpl-later"]
    await store.insert_feedback_many(batch)  # the whole batch replayed: nothing new, nothing counted
    assert await store.count_feedback() == 5 and await _feedback_total(store) == 4
    await store.insert_calls([make_call(9, id="chatcmpl-later")])  # the waited-for call counts its feedback
    assert await _feedback_total(store) == 5 and await _waiting(store) == []


async def test_a_feedback_row_of_a_forgotten_user_is_dropped_from_the_batch(store: SqlStore) -> None:
    await store.insert_calls([make_call(0)])
    await store.forget_user("eve")
    batch = [make_feedback("chatcmpl-000000", user="eve", created_at=T0), make_feedback("chatcmpl-000000", n=1)]
    await store.insert_feedback_many(batch)
    assert [f.id for f in await store.list_feedback()] == [batch[1].id]
    assert await _feedback_total(store) == 1


async def test_a_bad_row_in_a_feedback_batch_is_isolated(store: SqlStore, tmp_path: Path) -> None:
    await store.insert_calls([make_call(i) for i in range(6)])
    writer = CallWriter(store, tmp_path / "spill.jsonl", batch_size=64, retry_s=3600)
    await writer.start()
    for i in range(6):  # a feedback-only batch: no preparer, the raw NUL reaches the bulk statement
        writer.submit_feedback(make_feedback(f"chatcmpl-{i:06d}", comment="bad\x00byte" if i == 2 else "ok"))
    await writer.flush()
    await writer.stop()
    assert await store.count_feedback() == 6 and await _feedback_total(store) == 6
    assert (writer.stats.quarantined, writer.stats.spilled, writer.stats.written) == (0, 0, 6)
    if store.dialect.name == "postgresql":  # refused in bulk: retried row by row and repaired
        assert writer.stats.isolated_batches >= 1 and writer.stats.repaired == 1
        [fb] = await store.list_feedback(call_ids=["chatcmpl-000002"])
        assert fb.comment == "bad\ufffdbyte"


async def test_retention_deletes_feedback_whose_call_never_came(store: SqlStore) -> None:
    await store.insert_calls([make_call(i, created_at=T0 + 5000 + i) for i in range(2)])
    old_orphans = [FeedbackRecord(f"chatcmpl-gone-{i % 2}", id=f"fb-gone-{i}", created_at=T0 + i, rating=1)
                   for i in range(5)]
    on_a_call = make_feedback("chatcmpl-000000", created_at=T0 + 1)  # old, but its call is stored and newer
    young_orphan = FeedbackRecord("chatcmpl-soon", id="fb-soon", created_at=T0 + 9000, rating=-1)
    mixed = FeedbackRecord("chatcmpl-gone-1", id="fb-gone-young", created_at=T0 + 9000, rating=1)
    await store.insert_feedback_many([*old_orphans, on_a_call, young_orphan, mixed])
    assert await _waiting(store) == ["chatcmpl-gone-0", "chatcmpl-gone-1", "chatcmpl-soon"]
    assert await store.delete_older_than(T0 + 1000, batch=2) == 0  # no call is that old
    left = {f.id for f in await store.list_feedback()}
    assert left == {on_a_call.id, young_orphan.id, mixed.id}
    # gone-0 has nothing left to wait for; gone-1 still has a younger row; soon is too young to sweep
    assert await _waiting(store) == ["chatcmpl-gone-1", "chatcmpl-soon"]
    assert await _feedback_total(store) == 1
    await store.insert_calls([make_call(7, id="chatcmpl-soon", created_at=T0 + 9500)])  # it came after all
    assert await _feedback_total(store) == 2 and await _waiting(store) == ["chatcmpl-gone-1"]
