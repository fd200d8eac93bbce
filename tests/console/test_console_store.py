"""The console's store queries (gateway/store/console_queries.py) on SQLite and PostgreSQL:
sums of the hourly roll-ups, filters, keyset paging, and the action log."""

from __future__ import annotations

from gateway.store.console_queries import OTHER, CallFilter, RouteAction
from gateway.store.records import FeedbackRecord
from gateway.store.rollups import LATENCY_BUCKETS, QUANTILE_ERROR, hour_of, quantile
from gateway.store.sql import SqlStore
from tests.store.conftest import pg_database, store, store_url  # noqa: F401 - the fixtures, on both backends
from tests.store.factories import T0, make_call


async def test_buckets_quantiles_filters_and_paging(store: SqlStore) -> None:  # noqa: F811
    calls = []
    for i in range(20):  # 20 calls a minute apart, all in one hour
        c = make_call(i, created_at=T0 + 60 * i, user=f"user-{i % 2}", attempts=1)
        c.latency_ms, c.cost_usd, c.variant = float(i + 1), 0.01, "small" if i % 4 else "big"
        c.key_id = "team-a" if i < 10 else "team-b"
        if i == 7:
            c.status, c.error = 502, "upstream down"
        calls.append(c)
    calls.append(make_call(99, route="other", created_at=T0 + 30))
    await store.insert_calls(calls)
    await store.insert_feedback(FeedbackRecord(calls[1].id, created_at=T0 + 100, rating=1))
    await store.insert_feedback(FeedbackRecord(calls[2].id, created_at=T0 + 200, rating=-1))
    await store.insert_feedback(FeedbackRecord(calls[12].id, created_at=T0 + 800, correction="right", score=0.5))
    await store.insert_feedback(FeedbackRecord(calls[13].id, created_at=T0 + 900, signal="regenerated",
                                               source="inferred"))

    since = hour_of(T0)  # the 20 calls and their feedback fall in the hour from `since`
    buckets = await store.rollup_buckets({"support-bot": ["small"]}, since=since, width_s=3600, buckets=2)
    by = {(b.variant, b.bucket): b for b in buckets}
    assert sum(b.calls for b in buckets) == 20 and {b.bucket for b in buckets} == {0}
    assert by[(OTHER, 0)].calls == 5 and by[("small", 0)].calls == 15 and by[("small", 0)].errors == 1
    assert by[("small", 0)].latency_ms_sum == sum(float(i + 1) for i in range(20) if i % 4)
    assert abs(sum(b.cost_usd for b in buckets) - 0.2) < 1e-9
    both = await store.rollup_buckets({"support-bot": ["small", "big"]}, since=since, width_s=3600, buckets=1)
    assert {b.variant for b in both} == {"small", "big"}
    assert await store.rollup_buckets({"other": []}, since=since + 3600, width_s=3600, buckets=1) == []
    assert (sum(b.feedback for b in buckets), sum(b.up for b in buckets), sum(b.down for b in buckets)) == (4, 1, 1)
    assert (sum(b.corrections for b in buckets), sum(b.scored for b in buckets)) == (1, 1)
    assert sum(b.score_sum for b in buckets) == 0.5

    hist = [sum(b.latency_hist[k] for b in buckets) for k in range(LATENCY_BUCKETS)]
    p50, p95 = quantile(hist, 0.5), quantile(hist, 0.95)  # latencies 1..20 but the 502's (8)
    assert p50 is not None and abs(p50 / 11.0 - 1) <= QUANTILE_ERROR  # nearest rank: the 10th and 19th of 19
    assert p95 is not None and abs(p95 / 20.0 - 1) <= QUANTILE_ERROR

    async def ids(f: CallFilter, **kw: object) -> list[str]:
        return [c.id for c in await store.search_calls(f, **kw)]  # type: ignore[arg-type]

    assert await ids(CallFilter(route="support-bot", status="error")) == [calls[7].id]
    assert await ids(CallFilter(feedback="corrected")) == [calls[12].id]
    assert await ids(CallFilter(feedback="down")) == [calls[2].id]
    assert await ids(CallFilter(signal="regenerated")) == [calls[13].id]
    assert len(await ids(CallFilter(route="support-bot", feedback="none"))) == 16
    assert await ids(CallFilter(key_id="team-b", user="user-0", variant="big")) == [calls[16].id, calls[12].id]
    newest = await store.search_calls(CallFilter(route="support-bot"), limit=8)
    assert [c.id for c in newest] == [c.id for c in reversed(calls[12:20])]
    assert newest[0].feedback == 0 and (await store.search_calls(CallFilter(feedback="corrected")))[0].feedback == 1
    rest = await ids(CallFilter(route="support-bot"), limit=100, before=(newest[-1].created_at, newest[-1].id))
    assert rest == [c.id for c in reversed(calls[:12])]
    window = await ids(CallFilter(since=T0 + 60 * 5, until=T0 + 60 * 7, route="support-bot"))
    assert window == [calls[6].id, calls[5].id]

    await store.record_action(RouteAction("support-bot", "freeze", None, "admin-1", "too many complaints", T0))
    await store.record_action(RouteAction("support-bot", "unfreeze", None, "admin-2", "fixed", T0 + 1))
    await store.record_action(RouteAction("other", "pause", None, "admin-1", "x", T0 + 2))
    assert [(a.action, a.who, a.note) for a in await store.list_actions("support-bot")] == [
        ("freeze", "admin-1", "too many complaints"), ("unfreeze", "admin-2", "fixed")]
    assert len(await store.list_actions()) == 3
