"""Hourly roll-ups of calls and their feedback, kept by the store in the same transactions that
write or delete the rows they sum (issue #21: the console's charts read these, never the calls).

One row per (route, hour, variant, endpoint): calls, errors, cost (every call's, and the answered
ones'), tokens, the latency sum, a histogram of the answered calls' latency in fixed log buckets
(`LATENCY_EDGES_MS`: 4 per doubling, so a quantile read back is within ±9 % of the exact one),
and the feedback on those calls (rows, up- and down-ratings, scores, corrections). Feedback counts
under its CALL's hour and variant, so a bucket's rates are rates of that bucket's calls.

Who keeps them: a batch of calls adds one UPSERT row per key it touches (`add_calls`) and folds in
the feedback that reached the store before its call; a batch of feedback adds to its calls' keys
(`add_feedback`: one read of the calls, one UPSERT row per key) or, for the rows whose call is not
stored yet, marks the call in `rollup_waiting` for `add_calls`; deleting calls (retention, forget)
subtracts them and their feedback first (`subtract_calls`), and forgetting a user subtracts the
feedback they gave on other users' calls (`subtract_user_feedback`). Retention's orphan sweep
deletes the feedback older than the cut-off whose call never arrived (and its call's
`rollup_waiting` mark once no feedback waits on it): that feedback was counted in no roll-up, so
nothing is subtracted; `drop_empty` then deletes the rows of hours that ended before the cut-off
and count nothing. The invariant is "a feedback row is counted iff its call is stored". In
PostgreSQL the caller takes `Dialect.rollup_lock` (a feedback insert, the orphan sweep) or its
shared form (call inserts, deletions) before any row lock of its transaction, so a feedback row and
its call committed concurrently are never both missed nor both counted, and no lock cycle forms;
SQLite serialises writers anyway.

What it costs the writer: a call batch's UPSERT (call columns only) is, in PostgreSQL, also the
statement that reads `rollup_waiting`, so a batch no feedback waited for costs one statement; a
feedback batch costs a read of its calls' keys, the waiting rows in one statement, and an UPSERT of
the feedback columns only (bench/store_write.py prints the share of the store's time they take).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store import codec
from gateway.store.dialect import Conn, Dialect, placeholders
from gateway.store.records import FeedbackRecord

HOUR_S = 3600
PER_DOUBLING = 4
# Bucket 0: under 1 ms; bucket k (1..68): [EDGES[k-1], EDGES[k]); bucket 69: 2^17 ms (131 s) and over.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(2.0 ** (k / PER_DOUBLING) for k in range(17 * PER_DOUBLING + 1))
LATENCY_BUCKETS = len(LATENCY_EDGES_MS) + 1
QUANTILE_ERROR = 2.0 ** (1 / (2 * PER_DOUBLING)) - 1  # the geometric middle of a bucket: ±9.05 %
LATENCY_RESOLUTION = (f"p50/p95 from hourly histograms of {PER_DOUBLING} log buckets per doubling "
                      f"(1 ms to 131 s): within ±{QUANTILE_ERROR:.0%} of the exact quantile")

KEY_COLUMNS = ("route", "hour_start", "variant", "endpoint")
LAT_COLUMNS = tuple(f"lat_{k:02d}" for k in range(LATENCY_BUCKETS))
VALUE_COLUMNS = ("calls", "errors", "cost_usd", "ok_cost_usd", "prompt_tokens", "completion_tokens",
                 "latency_ms_sum", *LAT_COLUMNS, "feedback", "up", "down", "scored", "score_sum", "corrections")
_FLOATS = frozenset({"cost_usd", "ok_cost_usd", "latency_ms_sum", "score_sum"})
_I = {c: i for i, c in enumerate(VALUE_COLUMNS)}
_LAT0 = _I[LAT_COLUMNS[0]]
# A call batch writes only the first group, a feedback batch only the second (fewer columns to send and update).
CALL_VALUES = VALUE_COLUMNS[:_LAT0 + LATENCY_BUCKETS]
FEEDBACK_VALUES = VALUE_COLUMNS[_LAT0 + LATENCY_BUCKETS:]

_WAITING_READ = 1_000  # up to this many waited-for calls are read whole; more are probed per batch

Key = tuple[str, int, str, str]  # route, hour_start (unix seconds), variant, endpoint

# What a call contributes, in this order (`_Sums.call`), and where those are in a codec call row.
_CALL_NAMES = ("id", "route", "variant", "endpoint", "created_at", "status", "cost_usd", "prompt_tokens",
               "completion_tokens", "latency_ms")
_CALL_FIELDS = ", ".join(_CALL_NAMES)
_C = tuple(codec.CALL_COLUMNS.index(c) for c in _CALL_NAMES)
_FEEDBACK_FIELDS = "rating, score, CASE WHEN correction IS NULL THEN 0 ELSE 1 END"


@dataclass(frozen=True, slots=True)
class RollupBucket:
    """One (route, variant)'s sums over one time bucket of whole hours (console_queries.rollup_buckets)."""

    route: str
    variant: str
    bucket: int  # index of the bucket from the period's start
    calls: int
    errors: int  # calls not answered with status 200
    cost_usd: float
    ok_cost_usd: float  # cost of the calls answered with status 200
    prompt_tokens: int
    completion_tokens: int
    latency_ms_sum: float
    latency_hist: tuple[int, ...]  # answered calls per latency bucket (LATENCY_EDGES_MS)
    feedback: int  # feedback rows on these calls
    up: int
    down: int
    scored: int
    score_sum: float
    corrections: int


def bucket_from_sums(route: str, variant: str, bucket: int, v: Sequence[Any]) -> RollupBucket:
    """A `RollupBucket` from values in `VALUE_COLUMNS` order (PostgreSQL sums bigints as numerics)."""
    n = [float(x or 0) for x in v]
    i = _I
    return RollupBucket(route, variant, bucket, int(n[i["calls"]]), int(n[i["errors"]]), n[i["cost_usd"]],
                        n[i["ok_cost_usd"]], int(n[i["prompt_tokens"]]), int(n[i["completion_tokens"]]),
                        n[i["latency_ms_sum"]], tuple(int(x) for x in n[_LAT0:_LAT0 + LATENCY_BUCKETS]),
                        int(n[i["feedback"]]), int(n[i["up"]]), int(n[i["down"]]), int(n[i["scored"]]),
                        n[i["score_sum"]], int(n[i["corrections"]]))


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency (the same edges the backfill's SQL compares against)."""
    return bisect.bisect_right(LATENCY_EDGES_MS, ms)  # the number of edges <= ms


def quantile(hist: Sequence[int], q: float) -> float | None:
    """The nearest-rank q-quantile read from a histogram: the geometric middle of the bucket holding
    the ceil(q * n)-th smallest latency (the lowest and highest buckets answer their finite edge)."""
    n = sum(hist)
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n - 1e-9))
    seen = 0
    for k, count in enumerate(hist):
        seen += count
        if seen >= rank:
            if k == 0:
                return LATENCY_EDGES_MS[0]
            if k == len(LATENCY_EDGES_MS):
                return LATENCY_EDGES_MS[-1]
            return math.sqrt(LATENCY_EDGES_MS[k - 1] * LATENCY_EDGES_MS[k])
    return LATENCY_EDGES_MS[-1]


def hour_of(ts: float) -> int:
    """The start (unix seconds) of the UTC hour holding `ts` (divided, then floored, as the SQL does)."""
    return math.floor(ts / HOUR_S) * HOUR_S


_ID, _ROUTE, _VARIANT, _ENDPOINT, _CREATED, _STATUS, _COST, _PROMPT, _COMPLETION, _LATENCY = range(10)
_N_CALLS, _N_ERRORS, _N_COST, _N_OK_COST, _N_PROMPT, _N_COMPLETION, _N_LATENCY = range(7)  # VALUE_COLUMNS[:7]
_DB_ROW = tuple(range(10))  # a row selected as _CALL_FIELDS


def _key(r: Sequence[Any], ix: Sequence[int] = _DB_ROW) -> Key:
    """The roll-up row of a call (`ix`: where the `_CALL_NAMES` fields are in `r`)."""
    return (r[ix[_ROUTE]], hour_of(float(r[ix[_CREATED]])), r[ix[_VARIANT]], r[ix[_ENDPOINT]])


class _Sums:
    """Deltas per key, accumulated in Python and written with one UPSERT row per key."""

    def __init__(self) -> None:
        self.rows: dict[Key, list[Any]] = {}
        self.has_calls = False  # which column groups the UPSERT must carry
        self.has_feedback = False

    def _row(self, key: Key) -> list[Any]:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0.0 if c in _FLOATS else 0 for c in VALUE_COLUMNS]
        return row

    def calls(self, calls: Sequence[Sequence[Any]], sign: int, ix: Sequence[int] = _DB_ROW) -> dict[str, Key]:
        """Add (sign 1) or remove (sign -1) calls (`ix`: where the `_CALL_NAMES` fields are in a row);
        the key of each call id. Runs for every call the writer stores, hence the locals (a quarter faster)."""
        i_id, i_route, i_variant, i_endpoint, i_created, i_status, i_cost, i_prompt, i_completion, i_latency = ix
        rows, new_row, floor, bucket, edges = self.rows, self._row, math.floor, bisect.bisect_right, LATENCY_EDGES_MS
        keys: dict[str, Key] = {}
        for r in calls:
            key = (r[i_route], floor(float(r[i_created]) / HOUR_S) * HOUR_S, r[i_variant], r[i_endpoint])  # hour_of
            row = rows.get(key) or new_row(key)
            keys[r[i_id]] = key
            cost = float(r[i_cost] or 0.0)
            latency = float(r[i_latency])
            row[_N_CALLS] += sign
            row[_N_COST] += sign * cost
            row[_N_PROMPT] += sign * int(r[i_prompt] or 0)
            row[_N_COMPLETION] += sign * int(r[i_completion] or 0)
            row[_N_LATENCY] += sign * latency
            if r[i_status] == 200:
                row[_N_OK_COST] += sign * cost
                row[_LAT0 + bucket(edges, latency)] += sign
            else:
                row[_N_ERRORS] += sign
        self.has_calls = self.has_calls or bool(keys)
        return keys

    def feedback(self, key: Key, rating: Any, score: Any, corrected: Any, sign: int) -> None:
        """Add or remove one feedback row on a call of `key`."""
        row = self._row(key)
        self.has_feedback = True
        row[_I["feedback"]] += sign
        if rating is not None and int(rating) != 0:
            row[_I["up" if int(rating) > 0 else "down"]] += sign
        if score is not None:
            row[_I["scored"]] += sign
            row[_I["score_sum"]] += sign * float(score)
        row[_I["corrections"]] += sign * int(corrected or 0)

    def columns(self) -> tuple[str, ...]:
        """The value columns the deltas touch: the call group, the feedback group or both."""
        if self.has_calls and self.has_feedback:
            return VALUE_COLUMNS
        return CALL_VALUES if self.has_calls else FEEDBACK_VALUES

    def values(self, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """(key, values of `columns`) per key, in key order (concurrent writers lock rows in the same order)."""
        start = _I[columns[0]]
        end = start + len(columns)
        return [(*k, *v[start:end]) for k, v in sorted(self.rows.items())]

    async def write(self, conn: Conn) -> None:
        """One UPSERT row per key, of the column groups touched."""
        if self.rows:
            columns = self.columns()
            await conn.insert_many("call_rollups", KEY_COLUMNS + columns, self.values(columns), _upsert(columns))


# A float sum whose count returns to 0 (its calls or scores deleted) is reset, not left at rounding residue.
_COUNT_OF = {"cost_usd": "calls", "ok_cost_usd": "calls", "latency_ms_sum": "calls", "score_sum": "scored"}


def _set(c: str) -> str:
    added = f"call_rollups.{c} + excluded.{c}"
    if c not in _COUNT_OF:
        return f"{c} = {added}"
    n = _COUNT_OF[c]
    return f"{c} = CASE WHEN call_rollups.{n} + excluded.{n} = 0 THEN 0 ELSE {added} END"


@functools.cache
def _upsert(columns: tuple[str, ...]) -> str:
    """The ON CONFLICT clause adding `columns` (one of three fixed groups: the statement text stays cached)."""
    return f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET " + ", ".join(_set(c) for c in columns)


def _ids_in(dialect: Dialect, column: str) -> str:
    """`column` among one parameter's list of ids (`_ids_arg`): a statement text whatever the list's length."""
    if dialect.name == "sqlite":
        return f"{column} IN (SELECT value FROM json_each(?))"
    return f"{column} = ANY(?::text[])"


def _ids_arg(dialect: Dialect, ids: Sequence[str]) -> Any:
    return json.dumps(list(ids)) if dialect.name == "sqlite" else list(ids)


def _pg_type(column: str) -> str:
    """The array element type of a call_rollups column (as `_schema` declares it)."""
    if column in ("route", "variant", "endpoint"):
        return "text"
    if column == "hour_start" or "tokens" in column:
        return "int8"
    return "float8" if column in _FLOATS else "int4"


def _pg_add_calls_sql() -> str:
    """PostgreSQL: the call columns' UPSERT, which also returns the calls feedback waits for (the
    list, or its first `_WAITING_READ` + 1 ids; NULL when none is waited for, the common case)."""
    columns = KEY_COLUMNS + CALL_VALUES
    arrays = ", ".join(f"?::{_pg_type(c)}[]" for c in columns)
    return (f"WITH waiting AS (SELECT call_id FROM rollup_waiting LIMIT {_WAITING_READ + 1}) "
            f"INSERT INTO call_rollups ({', '.join(columns)}) SELECT * FROM unnest({arrays}) {_upsert(CALL_VALUES)} "
            "RETURNING (SELECT array_agg(call_id) FROM waiting)")


_PG_ADD_CALLS = _pg_add_calls_sql()


async def add_calls(conn: Conn, dialect: Dialect, calls: Sequence[Sequence[Any]]) -> None:
    """Count calls just inserted in this transaction (rows in `codec.CALL_COLUMNS` order), with the
    feedback stored before them. Run last in the transaction: the rows it locks are the hot ones."""
    if not calls:
        return
    sums = _Sums()
    keys = sums.calls(calls, 1, _C)
    # Calls with feedback waiting for them are few (feedback follows its call through the writer's
    # queue): reading the list cost ~0.2 ms a batch, probing it by the batch's 1,024 ids 0.7-1.8 ms
    # (PostgreSQL, 2026-12-06). The caller holds the roll-up lock, so every waiting row a replica
    # committed is seen; PostgreSQL reads the list within the UPSERT (one statement).
    if dialect.name == "postgresql":
        rows = await conn.fetch(_PG_ADD_CALLS, *map(list, zip(*sums.values(CALL_VALUES), strict=True)))
        waiting = set(rows[0][0] or ())
        sums = _Sums()  # written: what is left to add is the feedback on the calls it waited for
    else:
        waiting = {r[0] for r in await conn.fetch("SELECT call_id FROM rollup_waiting LIMIT ?", _WAITING_READ + 1)}
    if len(waiting) > _WAITING_READ:  # calls that never came pile up: probe by this batch's ids instead
        waiting = {r[0] for r in await conn.fetch(
            f"SELECT call_id FROM rollup_waiting WHERE {_ids_in(dialect, 'call_id')}", _ids_arg(dialect, list(keys)))}
    arrived = sorted(waiting.intersection(keys))
    if arrived:
        ids = _ids_arg(dialect, arrived)
        for row in await conn.fetch(f"SELECT call_id, {_FEEDBACK_FIELDS} FROM feedback "
                                    f"WHERE {_ids_in(dialect, 'call_id')}", ids):
            sums.feedback(keys[row[0]], row[1], row[2], row[3], 1)
        await conn.execute(f"DELETE FROM rollup_waiting WHERE {_ids_in(dialect, 'call_id')}", ids)
    await sums.write(conn)


async def add_feedback(conn: Conn, dialect: Dialect, feedback: Sequence[FeedbackRecord]) -> None:
    """Count feedback rows just inserted in this transaction: those whose call is stored are summed
    per key (one read of the calls, one UPSERT row per key); the others mark their call as waited
    for (one statement), and its insert counts them."""
    if not feedback:
        return
    call_ids = sorted({fb.call_id for fb in feedback})
    keys: dict[str, Key] = {
        r[0]: (r[1], hour_of(float(r[2])), r[3], r[4]) for r in await conn.fetch(
            f"SELECT id, route, created_at, variant, endpoint FROM calls WHERE {_ids_in(dialect, 'id')}",
            _ids_arg(dialect, call_ids))}
    sums = _Sums()
    for fb in feedback:
        key = keys.get(fb.call_id)
        if key is not None:
            sums.feedback(key, fb.rating, fb.score, fb.correction is not None, 1)
    waiting = [(c,) for c in call_ids if c not in keys]  # sorted: row locks in the same order
    if waiting:
        await conn.insert_many("rollup_waiting", ("call_id",), waiting, "ON CONFLICT (call_id) DO NOTHING")
    await sums.write(conn)


async def subtract_calls(conn: Conn, ids: Sequence[str]) -> None:
    """Uncount calls (and the feedback on them) about to be deleted in this transaction."""
    if not ids:
        return
    sums = _Sums()
    ph = placeholders(len(ids))
    keys = sums.calls(await conn.fetch(f"SELECT {_CALL_FIELDS} FROM calls WHERE id IN ({ph})", *ids), -1)
    for row in await conn.fetch(f"SELECT call_id, {_FEEDBACK_FIELDS} FROM feedback WHERE call_id IN ({ph})", *ids):
        if row[0] in keys:
            sums.feedback(keys[row[0]], row[1], row[2], row[3], -1)
    await sums.write(conn)


async def subtract_user_feedback(conn: Conn, user: str) -> None:
    """Uncount the feedback `user` gave (on stored calls), about to be deleted in this transaction."""
    sums = _Sums()
    fields = ", ".join(f"c.{c}" for c in _CALL_NAMES)
    for row in await conn.fetch(f"SELECT {fields}, f.rating, f.score, "
                                "CASE WHEN f.correction IS NULL THEN 0 ELSE 1 END "
                                "FROM feedback f JOIN calls c ON c.id = f.call_id WHERE f.user_id = ?", user):
        sums.feedback(_key(row), row[10], row[11], row[12], -1)
    await sums.write(conn)


async def drop_empty(conn: Conn, before: float) -> None:
    """Delete the rows of hours that ended before `before` and count nothing any more (retention)."""
    await conn.execute("DELETE FROM call_rollups WHERE hour_start <= ? AND calls = 0 AND feedback = 0",
                       int(before) - HOUR_S)


def _hour_sql(dialect: Dialect, column: str) -> str:
    # PostgreSQL's CAST rounds; SQLite's truncates (timestamps are positive, so it floors).
    if dialect.name == "sqlite":
        return f"CAST({column} / {HOUR_S} AS INTEGER) * {HOUR_S}"
    return f"CAST(FLOOR({column} / {HOUR_S}) AS BIGINT) * {HOUR_S}"


async def rebuild(conn: Conn, dialect: Dialect) -> None:
    """Recompute every roll-up from the calls and feedback tables, in the database (two grouped
    INSERT … SELECTs; the migration's backfill, and bench/console_pages.py's after a bulk load)."""
    await conn.execute("DELETE FROM call_rollups")
    await conn.execute("DELETE FROM rollup_waiting")
    await conn.execute("INSERT INTO rollup_waiting (call_id) SELECT DISTINCT f.call_id FROM feedback f "
                       "WHERE NOT EXISTS (SELECT 1 FROM calls c WHERE c.id = f.call_id)")
    hists: list[str] = ["SUM(CASE WHEN status = 200 AND latency_ms < ? THEN 1 ELSE 0 END)"]
    edges: list[float] = [LATENCY_EDGES_MS[0]]
    for k in range(1, len(LATENCY_EDGES_MS)):
        hists.append("SUM(CASE WHEN status = 200 AND latency_ms >= ? AND latency_ms < ? THEN 1 ELSE 0 END)")
        edges += [LATENCY_EDGES_MS[k - 1], LATENCY_EDGES_MS[k]]
    hists.append("SUM(CASE WHEN status = 200 AND latency_ms >= ? THEN 1 ELSE 0 END)")
    edges.append(LATENCY_EDGES_MS[-1])
    await conn.execute(
        f"INSERT INTO call_rollups ({', '.join(KEY_COLUMNS + VALUE_COLUMNS[:_LAT0 + LATENCY_BUCKETS])}) "
        f"SELECT route, {_hour_sql(dialect, 'created_at')}, variant, endpoint, COUNT(*), "
        "SUM(CASE WHEN status = 200 THEN 0 ELSE 1 END), COALESCE(SUM(cost_usd), 0), "
        "COALESCE(SUM(CASE WHEN status = 200 THEN cost_usd END), 0), COALESCE(SUM(prompt_tokens), 0), "
        f"COALESCE(SUM(completion_tokens), 0), SUM(latency_ms), {', '.join(hists)} "
        "FROM calls GROUP BY 1, 2, 3, 4", *edges)
    fb = ("feedback", "up", "down", "scored", "score_sum", "corrections")
    # WHERE true: SQLite would read a bare `… GROUP BY … ON CONFLICT` as ambiguous.
    await conn.execute(
        f"INSERT INTO call_rollups ({', '.join(KEY_COLUMNS + fb)}) "
        f"SELECT c.route, {_hour_sql(dialect, 'c.created_at')}, c.variant, c.endpoint, COUNT(*), "
        "SUM(CASE WHEN f.rating > 0 THEN 1 ELSE 0 END), SUM(CASE WHEN f.rating < 0 THEN 1 ELSE 0 END), "
        "COUNT(f.score), COALESCE(SUM(f.score), 0), COUNT(f.correction) "
        "FROM feedback f JOIN calls c ON c.id = f.call_id WHERE 1 = 1 GROUP BY 1, 2, 3, 4 "
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in fb))


def _schema() -> list[str]:
    values = ", ".join(f"{c} {'DOUBLE PRECISION' if c in _FLOATS else 'BIGINT' if 'tokens' in c else 'INTEGER'} "
                       "NOT NULL DEFAULT 0" for c in VALUE_COLUMNS)
    return [f"CREATE TABLE call_rollups (route TEXT NOT NULL, hour_start BIGINT NOT NULL, variant TEXT NOT NULL, "
            f"endpoint TEXT NOT NULL, {values}, PRIMARY KEY (route, hour_start, variant, endpoint))",
            "CREATE INDEX call_rollups_hour ON call_rollups (hour_start)",
            # calls that feedback arrived before: their insert counts that feedback
            "CREATE TABLE rollup_waiting (call_id TEXT PRIMARY KEY)"]


async def migrate(conn: Conn, dialect: Dialect) -> None:
    """Migration 016_rollups: the table, backfilled from the rows already stored."""
    for stmt in _schema():
        await conn.execute(stmt)
    await rebuild(conn, dialect)
