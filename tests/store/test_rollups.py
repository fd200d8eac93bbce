"""The hourly roll-ups (gateway/store/rollups.py) equal an aggregation from scratch after every kind
of write and delete, on SQLite and PostgreSQL, and the migration backfills them from existing rows."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytest

from gateway.store import rollups
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.sql import SqlStore
from tests.store.factories import T0, make_call

Table = dict[tuple[Any, ...], tuple[float, ...]]


def _calls() -> list[CallRecord]:
    """Calls over three hours on two routes and three variants, with errors, odd costs and latencies."""
    out = []
    for i in range(60):
        c = make_call(i, created_at=T0 + 190 * i, user=f"user-{i % 3}", attempts=1,
                      route="support" if i % 5 else "billing")
        c.variant = ("small", "large", "tiny")[i % 3]
        c.latency_ms = 0.5 + 37.3 * i  # from under a millisecond to ~2 s
        c.cost_usd = None if i % 11 == 0 else 0.001 * (i % 7)
        c.prompt_tokens = None if i % 13 == 0 else 100 + i
        if i % 9 == 4:
            c.status, c.error = 502, "upstream down"
        out.append(c)
    return out


def _feedback(calls: list[CallRecord]) -> list[FeedbackRecord]:
    fb = []
    for i, c in enumerate(calls[::2]):
        kind = i % 4
        fb.append(FeedbackRecord(c.id, id=f"fb-{i}", created_at=c.created_at + 5000, user=f"user-{(i + 1) % 3}",
                                 rating=(1, -1, None, None)[kind], score=0.25 * kind if kind >= 2 else None,
                                 correction="better" if kind == 3 else None))
    return fb


async def _stored(store: SqlStore) -> Table:
    async with store._read() as conn:
        rows = await conn.fetch(f"SELECT {', '.join(rollups.KEY_COLUMNS + rollups.VALUE_COLUMNS)} FROM call_rollups")
    return {tuple(r[:4]): tuple(float(x) for x in r[4:]) for r in rows if any(float(x) for x in r[4:])}


async def _from_scratch(store: SqlStore) -> Table:
    """The roll-ups recomputed in Python from every stored call and feedback row."""
    calls = {c.id: c for c in await store.list_calls(limit=100_000)}
    sums: dict[tuple[Any, ...], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for c in calls.values():
        s = sums[(c.route, math.floor(c.created_at / 3600) * 3600, c.variant, c.endpoint)]
        s["calls"] += 1
        s["errors"] += c.status != 200
        s["cost_usd"] += c.cost_usd or 0.0
        s["ok_cost_usd"] += (c.cost_usd or 0.0) if c.status == 200 else 0.0
        s["prompt_tokens"] += c.prompt_tokens or 0
        s["completion_tokens"] += c.completion_tokens or 0
        s["latency_ms_sum"] += c.latency_ms
        if c.status == 200:
            s[rollups.LAT_COLUMNS[rollups.latency_bucket(c.latency_ms)]] += 1
    for f in await store.list_feedback():
        c = calls.get(f.call_id)
        if c is None:
            continue  # feedback counts only while its call is stored
        s = sums[(c.route, math.floor(c.created_at / 3600) * 3600, c.variant, c.endpoint)]
        s["feedback"] += 1
        s["up"] += (f.rating or 0) > 0
        s["down"] += (f.rating or 0) < 0
        s["scored"] += f.score is not None
        s["score_sum"] += f.score or 0.0
        s["corrections"] += f.correction is not None
    return {k: tuple(v[c] for c in rollups.VALUE_COLUMNS) for k, v in sums.items()}


async def _check(store: SqlStore) -> Table:
    stored, expected = await _stored(store), await _from_scratch(store)
    assert stored.keys() == expected.keys()
    for key, values in expected.items():
        assert stored[key] == pytest.approx(values, abs=1e-9), key
    return stored


async def test_rollups_follow_inserts_feedback_retention_and_forget(store: SqlStore) -> None:
    calls, feedback = _calls(), _feedback(_calls())
    early = FeedbackRecord(calls[-1].id, id="fb-early", created_at=T0, rating=-1, correction="x")
    await store.insert_feedback(early)  # feedback before its call: counted when the call arrives
    assert await _stored(store) == {}
    await store.insert_calls(calls[:40])
    await store.insert_calls(calls[30:])  # overlaps: the 10 known calls are skipped, not counted twice
    for fb in feedback:
        await store.insert_feedback(fb)
    await store.insert_feedback(feedback[0])  # a known feedback id is skipped, not counted twice
    await store.insert_feedback(FeedbackRecord("chatcmpl-nowhere", id="fb-orphan", rating=1))
    table = await _check(store)
    async with store._read() as conn:  # only the call that never came is still waited for
        assert [r[0] for r in await conn.fetch("SELECT call_id FROM rollup_waiting")] == ["chatcmpl-nowhere"]
    assert sum(v[0] for v in table.values()) == 60 and len({k[1] for k in table}) == 4  # four hours
    assert sum(v[rollups.VALUE_COLUMNS.index("feedback")] for v in table.values()) == len(feedback) + 1

    assert await store.delete_older_than(T0 + 190 * 20 + 1) == 21  # retention: the oldest 21 calls
    await _check(store)
    own, given = await store.user_row_ids("user-1")
    others = {c.id for c in await store.list_calls(limit=1000) if c.user != "user-1"}
    assert any(f.call_id in others for f in await store.list_feedback() if f.id in given)  # theirs on others' calls
    assert (await store.forget_user("user-1"))[0] == len(own)  # their calls, the feedback on them and theirs
    await _check(store)
    await store.insert_calls([calls[0]])  # a late call after retention: counted again, then swept again
    await _check(store)
    await store.delete_older_than(T0 + 100_000)
    assert await _stored(store) == {}
    async with store._read() as conn:  # emptied hours leave no rows behind
        assert (await conn.fetch("SELECT COUNT(*) FROM call_rollups"))[0][0] == 0


async def test_a_feedback_batch_on_many_calls_and_hours_is_counted_once_per_row(
        store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls()
    stored, later = calls[::2], calls[1::2]
    await store.insert_calls(stored)
    batch = []
    for round_ in range(3):  # several rows per call, over every hour, route and variant
        for i, c in enumerate(calls[round_::3]):
            batch.append(FeedbackRecord(c.id, id=f"fb-{round_}-{i}", created_at=c.created_at + 10, user="user-9",
                                        rating=(1, -1, None)[i % 3], score=0.1 * (i % 4) if i % 2 else None,
                                        correction="fix" if i % 5 == 0 else None))
    batch.append(batch[0])  # a known id inside the batch: skipped, not counted twice
    batch.append(FeedbackRecord("chatcmpl-nowhere", id="fb-orphan", rating=1))
    batch.append(FeedbackRecord("chatcmpl-nowhere", id="fb-orphan-2", score=0.5))
    await store.insert_feedback_many(batch)
    table = await _check(store)
    assert sum(v[rollups.VALUE_COLUMNS.index("feedback")] for v in table.values()) == sum(
        1 for f in batch[:-3] if f.call_id in {c.id for c in stored})
    async with store._read() as conn:  # each call not stored yet is waited for once
        waiting = sorted(r[0] for r in await conn.fetch("SELECT call_id FROM rollup_waiting"))
    assert waiting == sorted({f.call_id for f in batch if f.call_id not in {c.id for c in stored}})
    await store.insert_calls(later[:10])  # a batch of which some calls were waited for
    monkeypatch.setattr(rollups, "_WAITING_READ", 0)  # as if many calls never came: probed by the batch's ids
    await store.insert_calls(later[10:])
    table = await _check(store)
    assert sum(v[rollups.VALUE_COLUMNS.index("feedback")] for v in table.values()) == len(batch) - 3
    async with store._read() as conn:
        assert [r[0] for r in await conn.fetch("SELECT call_id FROM rollup_waiting")] == ["chatcmpl-nowhere"]
    await store.insert_feedback_many(batch[:5])  # a replayed batch: nothing new, nothing counted
    assert await _check(store) == table


async def test_the_migration_backfills_existing_rows(store: SqlStore) -> None:
    calls = _calls()
    await store.insert_calls(calls)
    for fb in _feedback(calls):
        await store.insert_feedback(fb)
    await store.insert_feedback(FeedbackRecord("chatcmpl-later", id="fb-later", rating=1))  # its call comes later
    kept = await _check(store)
    async with store._write() as conn:  # back to a store from before 016_rollups
        for table in ("call_rollups", "rollup_waiting"):
            await conn.execute(f"DROP TABLE {table}")
        await conn.execute("DELETE FROM _migrations WHERE name = ?", "016_rollups")
    await store.migrate()
    backfilled = await _check(store)
    await store.insert_calls([make_call(999, id="chatcmpl-later", created_at=T0)])  # the backfill kept it waited for
    later = (await _check(store))[("support-bot", rollups.hour_of(T0), "small", "chat")]
    assert later[rollups.VALUE_COLUMNS.index("up")] == 1
    assert backfilled.keys() == kept.keys()
    assert all(backfilled[k] == pytest.approx(v, abs=1e-9) for k, v in kept.items())


async def test_console_buckets_sum_whole_hours_and_fold_unknown_variants(store: SqlStore) -> None:
    calls = _calls()
    await store.insert_calls(calls)
    for fb in _feedback(calls):
        await store.insert_feedback(fb)
    since = rollups.hour_of(T0)
    got = await store.rollup_buckets({"support": ["small", "large"], "billing": []}, since=since, width_s=7200,
                                     buckets=2)
    assert {b.variant for b in got if b.route == "billing"} == {"(other)"}
    got = [b for b in got if b.route == "support"]
    mine = [c for c in calls if c.route == "support"]
    assert sum(b.calls for b in got) == len(mine)
    assert {b.variant for b in got} == {"small", "large", "(other)"}
    for b in got:
        expected = [c for c in mine if int((c.created_at - since) // 7200) == b.bucket
                    and (c.variant if c.variant != "tiny" else "(other)") == b.variant]
        assert b.calls == len(expected) and b.errors == sum(c.status != 200 for c in expected)
        assert b.cost_usd == pytest.approx(sum(c.cost_usd or 0 for c in expected))
        assert sum(b.latency_hist) == b.calls - b.errors
    with pytest.raises(ValueError, match="whole hours"):
        await store.rollup_buckets({"support": []}, since=since + 60, width_s=3600, buckets=1)


def test_quantiles_read_back_within_the_stated_resolution() -> None:
    latencies = [0.4, *(1.7 ** k for k in range(1, 22))]  # under 1 ms to ~70 s
    hist = [0] * rollups.LATENCY_BUCKETS
    for ms in latencies:
        hist[rollups.latency_bucket(ms)] += 1
    ordered = sorted(latencies)
    for q in (0.5, 0.9, 0.95):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        got = rollups.quantile(hist, q)
        assert got is not None and abs(got / exact - 1) <= rollups.QUANTILE_ERROR + 1e-12, (q, got, exact)
    assert rollups.quantile([0] * rollups.LATENCY_BUCKETS, 0.5) is None
    assert rollups.latency_bucket(0.99) == 0 and rollups.latency_bucket(1.0) == 1
    assert rollups.latency_bucket(10 ** 7) == rollups.LATENCY_BUCKETS - 1
    assert rollups.QUANTILE_ERROR < 0.091
