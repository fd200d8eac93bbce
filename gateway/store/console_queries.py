"""Read queries behind the team console (gateway/console/), and its action log.

Charts and figures are sums of the hourly roll-ups the store keeps as it writes (rollups.py); call
searches page through indexed ranges (calls_console, feedback_call): the console never loads a
window's calls into Python to count them, so its pages stay fast on a store with millions of
calls. `ConsoleQueries` is mixed into `SqlStore`; the results are small frozen dataclasses.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal

from gateway.store import codec
from gateway.store.dialect import Conn, Dialect, placeholders
from gateway.store.records import CallRecord
from gateway.store.rollups import HOUR_S, VALUE_COLUMNS, RollupBucket, bucket_from_sums

FeedbackFilter = Literal["any", "none", "up", "down", "corrected"]
StatusFilter = Literal["ok", "error"]
OTHER = "(other)"  # calls of variants no longer configured
ActionKind = Literal["promote", "rollback", "pause", "resume", "freeze", "unfreeze", "publish"]


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

    async def rollup_buckets(self, variants: Mapping[str, Sequence[str]], *, since: float, width_s: float,
                             buckets: int) -> list[RollupBucket]:
        """The chat calls and their feedback of each route in `variants` per (variant, bucket of `width_s`
        seconds from `since`), summed from the hourly roll-ups (gateway/store/rollups.py): one grouped
        range read of a few rows per route and hour, whatever the number of calls. `since` and `width_s`
        are whole hours; calls of a variant not in the route's list (no longer configured) are summed
        under OTHER."""
        if since % HOUR_S or width_s % HOUR_S or width_s <= 0:
            raise ValueError("roll-ups are hourly: since and width_s must be whole hours")
        if not variants:
            return []
        start, width, routes = int(since), int(width_s), list(variants)
        sums = ", ".join(f"SUM({c})" for c in VALUE_COLUMNS)
        sql = (f"SELECT route, variant, (hour_start - ?) / ? AS b, {sums} FROM call_rollups "
               f"WHERE route IN ({placeholders(len(routes))}) AND endpoint = 'chat' AND hour_start >= ? "
               "AND hour_start < ? GROUP BY 1, 2, 3")
        async with self._read() as conn:
            rows = await conn.fetch(sql, start, width, *routes, start, start + width * int(buckets))
        known = {r: set(v) for r, v in variants.items()}
        merged: dict[tuple[str, int, str], list[float]] = {}
        for r in rows:
            key = (r[0], int(r[2]), r[1] if r[1] in known[r[0]] else OTHER)
            values = [float(x or 0) for x in r[3:]]
            prev = merged.get(key)
            merged[key] = values if prev is None else [a + b for a, b in zip(prev, values, strict=True)]
        return [bucket_from_sums(route, v, b, values)
                for (route, b, v), values in sorted(merged.items()) if any(values)]

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

