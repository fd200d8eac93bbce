"""Read queries behind the team console (gateway/console/), and its action log.

Every figure is aggregated by the database over an indexed time range (calls_route_created,
calls_created, feedback_created, feedback_call): the console never loads a window's calls into
Python to count them, so its pages stay fast on a store with millions of calls. `ConsoleQueries`
is mixed into `SqlStore`; the results are small frozen dataclasses.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal

from gateway.store import codec
from gateway.store.dialect import Conn, Dialect, placeholders
from gateway.store.records import CallRecord

FeedbackFilter = Literal["any", "none", "up", "down", "corrected"]
StatusFilter = Literal["ok", "error"]
OTHER = "(other)"  # calls of variants no longer configured
LATENCY_SAMPLE = 2_000  # newest answered calls the latency quantiles are read from (a bounded sort)
ActionKind = Literal["promote", "rollback", "pause", "resume", "freeze", "unfreeze", "publish"]


@dataclass(frozen=True, slots=True)
class CallBucket:
    """Calls of one (route, variant) in one time bucket."""

    route: str
    variant: str
    bucket: int  # index of the bucket from `since`
    calls: int
    errors: int
    cost_usd: float
    latency_ms_sum: float


@dataclass(frozen=True, slots=True)
class FeedbackBucket:
    """Feedback on one route's calls in one time bucket (by when the feedback arrived)."""

    route: str
    bucket: int
    rows: int
    rated: int
    rating_sum: int
    down: int
    scored: int
    score_sum: float
    corrections: int


@dataclass(frozen=True, slots=True)
class CallFilter:
    """The calls explorer's filters; None: no filter on that field."""

    route: str | None = None
    variant: str | None = None
    key_id: str | None = None
    user: str | None = None
    status: StatusFilter | None = None
    feedback: FeedbackFilter | None = None
    signal: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True, slots=True)
class CallSummary:
    """One row of the calls explorer (no message text: that is on the call page)."""

    id: str
    created_at: float
    route: str
    variant: str
    model: str
    key_id: str | None
    user: str | None
    status: int
    cost_usd: float | None
    latency_ms: float
    template_version: str | None
    index_version: str | None
    feedback: int


@dataclass(frozen=True, slots=True)
class RouteAction:
    """A person's action on a route from the console or the CLI: who (key id) and why (a note)."""

    route: str
    action: ActionKind
    target: str | None  # the version acted on, when there is one
    who: str
    note: str
    at: float = 0.0


_SUMMARY_COLS = ("id, created_at, route, variant, model, key_id, user_id, status, cost_usd, latency_ms, "
                 "template_version, index_version, "
                 "(SELECT COUNT(*) FROM feedback f WHERE f.call_id = calls.id) AS fb")

_FEEDBACK_CONDITIONS: dict[str, str] = {
    "any": "EXISTS (SELECT 1 FROM feedback f WHERE f.call_id = calls.id)",
    "none": "NOT EXISTS (SELECT 1 FROM feedback f WHERE f.call_id = calls.id)",
    "up": "EXISTS (SELECT 1 FROM feedback f WHERE f.call_id = calls.id AND f.rating > 0)",
    "down": "EXISTS (SELECT 1 FROM feedback f WHERE f.call_id = calls.id AND f.rating < 0)",
    "corrected": "EXISTS (SELECT 1 FROM feedback f WHERE f.call_id = calls.id AND f.correction IS NOT NULL)",
}


class ConsoleQueries:
    """The console's queries; mixed into `SqlStore`, which supplies `_read`, `_write` and `dialect`."""

    dialect: Dialect

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]: ...

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]: ...

    @abstractmethod
    async def _hydrate(self, conn: Conn, calls: list[CallRecord]) -> list[CallRecord]: ...

    async def call_buckets(self, route: str, *, since: float, width_s: float, buckets: int,
                           variants: Sequence[str]) -> list[CallBucket]:
        """The route's chat calls per (variant, bucket of `width_s` seconds from `since`); calls of a
        variant not in `variants` (no longer configured) are counted under OTHER.

        One range query per bucket with a column per variant: a plain scan of the covering index
        calls_console (migration 014), where a GROUP BY would sort every row of the period."""
        cols = ["COUNT(*)", "SUM(CASE WHEN status = 200 THEN 0 ELSE 1 END)", "COALESCE(SUM(cost_usd), 0)",
                "COALESCE(SUM(latency_ms), 0)"]
        args: list[Any] = []
        for v in variants:
            cols += ["SUM(CASE WHEN variant = ? THEN 1 ELSE 0 END)",
                     "SUM(CASE WHEN variant = ? AND status <> 200 THEN 1 ELSE 0 END)",
                     "COALESCE(SUM(CASE WHEN variant = ? THEN cost_usd END), 0)",
                     "COALESCE(SUM(CASE WHEN variant = ? THEN latency_ms END), 0)"]
            args += [v, v, v, v]
        sql = (f"SELECT {', '.join(cols)} FROM calls "
               "WHERE route = ? AND created_at >= ? AND created_at < ? AND endpoint = 'chat'")
        out: list[CallBucket] = []
        async with self._read() as conn:
            for i in range(buckets):
                lo = float(since) + i * width_s
                row = (await conn.fetch(sql, *args, route, lo, lo + width_s))[0]
                total = [int(row[0] or 0), int(row[1] or 0), float(row[2] or 0.0), float(row[3] or 0.0)]
                for j, v in enumerate(variants):
                    part = row[4 + 4 * j: 8 + 4 * j]
                    if part[0]:
                        out.append(CallBucket(route, v, i, int(part[0]), int(part[1]), float(part[2]), float(part[3])))
                        total = [total[0] - int(part[0]), total[1] - int(part[1]), total[2] - float(part[2]),
                                 total[3] - float(part[3])]
                if total[0] > 0:
                    out.append(CallBucket(route, OTHER, i, int(total[0]), int(total[1]), total[2], total[3]))
        return out

    async def feedback_buckets(self, route: str, *, since: float, width_s: float,
                               buckets: int) -> list[FeedbackBucket]:
        """Feedback on the route's calls per bucket of `width_s` seconds (by when the feedback arrived)."""
        sql = ("SELECT COUNT(*), COUNT(f.rating), COALESCE(SUM(f.rating), 0), "
               "SUM(CASE WHEN f.rating < 0 THEN 1 ELSE 0 END), COUNT(f.score), COALESCE(SUM(f.score), 0), "
               "COUNT(f.correction) FROM feedback f JOIN calls c ON c.id = f.call_id "
               "WHERE f.created_at >= ? AND f.created_at < ? AND c.route = ?")
        out: list[FeedbackBucket] = []
        async with self._read() as conn:
            for i in range(buckets):
                lo = float(since) + i * width_s
                r = (await conn.fetch(sql, lo, lo + width_s, route))[0]
                if r[0]:
                    out.append(FeedbackBucket(route, i, int(r[0]), int(r[1]), int(r[2] or 0), int(r[3] or 0),
                                              int(r[4]), float(r[5] or 0.0), int(r[6])))
        return out

    async def latency_quantiles(self, route: str, *, since: float, quantiles: Sequence[float] = (0.5, 0.95),
                                sample: int = LATENCY_SAMPLE) -> list[float | None]:
        """Latency quantiles (nearest rank: the ceil(q * n)-th smallest) of the route's newest `sample`
        answered chat calls since `since`: one bounded sort however long the period."""
        if not quantiles:
            return []
        picks = " OR ".join("(rn >= CAST(? AS DOUBLE PRECISION) * n AND rn < CAST(? AS DOUBLE PRECISION) * n + 1)"
                          for _ in quantiles)
        sql = ("SELECT rn, n, latency_ms FROM (SELECT latency_ms, ROW_NUMBER() OVER (ORDER BY latency_ms) AS rn, "
               "COUNT(*) OVER () AS n FROM (SELECT latency_ms FROM calls WHERE route = ? AND created_at >= ? "
               "AND status = 200 AND endpoint = 'chat' ORDER BY created_at DESC LIMIT ?) s) r "
               f"WHERE {picks}")
        args: list[Any] = [route, float(since), int(sample)]
        for q in quantiles:
            args += [float(q), float(q)]
        async with self._read() as conn:
            rows = await conn.fetch(sql, *args)
        by_rank = {int(r[0]): float(r[2]) for r in rows}
        n = int(rows[0][1]) if rows else 0
        return [by_rank.get(max(1, math.ceil(q * n - 1e-9))) if n else None for q in quantiles]

    async def calls_by_ids(self, ids: Sequence[str]) -> list[CallRecord]:
        """The calls with these ids (attempts and request text restored), in no particular order."""
        if not ids:
            return []
        async with self._read() as conn:
            rows = await conn.fetch(f"SELECT {', '.join(codec.CALL_COLUMNS)} FROM calls "
                                    f"WHERE id IN ({placeholders(len(ids))})", *ids)
            return await self._hydrate(conn, [codec.call_from_row(r) for r in rows])

    async def search_calls(self, f: CallFilter, *, limit: int = 50,
                           before: tuple[float, str] | None = None) -> list[CallSummary]:
        """Calls matching `f`, newest first; `before` (created_at, id) pages on from a previous page's last row."""
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("route = ?", f.route), ("variant = ?", f.variant), ("key_id = ?", f.key_id),
                              ("user_id = ?", f.user),
                              ("created_at >= ?", None if f.since is None else float(f.since)),
                              ("created_at < ?", None if f.until is None else float(f.until))):
            if value is not None:
                where.append(clause)
                args.append(value)
        if f.status == "ok":
            where.append("status = 200")
        elif f.status == "error":
            where.append("status <> 200")
        if f.feedback is not None:
            where.append(_FEEDBACK_CONDITIONS[f.feedback])
        if f.signal is not None:
            where.append("EXISTS (SELECT 1 FROM feedback f WHERE f.call_id = calls.id AND f.signal = ?)")
            args.append(f.signal)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [float(before[0]), float(before[0]), before[1]]
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        # Two steps: the ids from the covering index calls_console (a route's filters never read a
        # row that does not match), then those rows.
        async with self._read() as conn:
            ids = [r[0] for r in await conn.fetch(
                f"SELECT id FROM calls{cond} ORDER BY created_at DESC, id DESC LIMIT ?", *args, int(limit))]
            if not ids:
                return []
            rows = await conn.fetch(f"SELECT {_SUMMARY_COLS} FROM calls WHERE id IN ({placeholders(len(ids))}) "
                                    "ORDER BY created_at DESC, id DESC", *ids)
        return [CallSummary(r[0], float(r[1]), r[2], r[3], r[4], r[5], r[6], int(r[7]),
                            None if r[8] is None else float(r[8]), float(r[9]), r[10], r[11], int(r[12]))
                for r in rows]

    async def recent_feedback_calls(self, *, since: float, route: str | None = None,
                                    limit: int = 200) -> list[tuple[str, str]]:
        """(feedback id, call id) of the newest corrections and down-ratings since `since`, newest first."""
        where = "f.created_at >= ? AND (f.correction IS NOT NULL OR f.rating < 0)"
        args: list[Any] = [float(since)]
        if route is not None:
            where += " AND c.route = ?"
            args.append(route)
        sql = (f"SELECT f.id, f.call_id FROM feedback f JOIN calls c ON c.id = f.call_id WHERE {where} "
               "ORDER BY f.created_at DESC LIMIT ?")
        async with self._read() as conn:
            rows = await conn.fetch(sql, *args, int(limit))
        return [(r[0], r[1]) for r in rows]

    async def record_action(self, a: RouteAction) -> None:
        """Append a person's action to the route's action log."""
        async with self._write() as conn:
            await conn.execute("INSERT INTO route_actions (route, action, target, who, note, at) "
                               "VALUES (?, ?, ?, ?, ?, ?)", a.route, a.action, a.target, a.who, a.note,
                               a.at or time.time())

    async def list_actions(self, route: str | None = None, *, limit: int = 500) -> list[RouteAction]:
        """The newest actions (of one route, or all), oldest first."""
        cond = " WHERE route = ?" if route is not None else ""
        args: list[Any] = [route] if route is not None else []
        async with self._read() as conn:
            rows = await conn.fetch(f"SELECT route, action, target, who, note, at FROM route_actions{cond} "
                                    "ORDER BY at DESC, id DESC LIMIT ?", *args, int(limit))
        return [RouteAction(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in reversed(rows)]

