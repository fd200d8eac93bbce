"""The store's queries, written once for both backends.

`SqlStore` implements the whole `Store` protocol on top of two hooks a backend provides:
`_write()` and `_read()`, async context managers yielding a `Conn` inside a write or a
read transaction. Placeholders and the few fragments that differ come from `self.dialect`.

It is assembled from mixins, one per part of the protocol: batch inserts of calls and feedback
(sql_inserts.py), artifacts and transitions (sql_artifacts.py), forget and retention deletes
(sql_deletes.py), stored responses, spend, key states and the console's reads. This module holds
the hooks, migrations, and the reads of calls and feedback.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.store import codec, migrations
from gateway.store.console_queries import ConsoleQueries
from gateway.store.dialect import Conn, Dialect, chunks, placeholders
from gateway.store.key_states import KeyStateQueries
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.responses import ResponseQueries
from gateway.store.spend_queries import SpendQueries
from gateway.store.sql_artifacts import ArtifactQueries
from gateway.store.sql_deletes import DeleteQueries
from gateway.store.sql_inserts import InsertQueries

log = logging.getLogger(__name__)

_CALL_COLS = ", ".join(codec.CALL_COLUMNS)
_FB_COLS_F = ", ".join(f"f.{c}" for c in codec.FEEDBACK_COLUMNS)


class SqlStore(InsertQueries, ArtifactQueries, DeleteQueries, ConsoleQueries, ResponseQueries, SpendQueries,
               KeyStateQueries, ABC):
    """Shared implementation of `Store`; subclasses supply connections and a dialect."""

    dialect: Dialect

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]:
        """A connection inside a write transaction (committed on clean exit)."""

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]:
        """A connection inside a consistent read transaction."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    async def migrate(self) -> None:
        """Apply the missing migrations (see `gateway.store.migrations`)."""
        async with self._write() as conn:
            applied = await migrations.apply(conn, self.dialect)
        if applied:
            log.info("store migrations applied: %s", ", ".join(applied))

    # -- calls -------------------------------------------------------------------------------

    async def _hydrate(self, conn: Conn, calls: list[CallRecord]) -> list[CallRecord]:
        """Attach attempts and restore blob texts for calls read from the calls table."""
        by_id = {c.id: c for c in calls}
        for ids in chunks(list(by_id)):
            for row in await conn.fetch(
                f"SELECT {', '.join(codec.ATTEMPT_COLUMNS)} FROM attempts "
                f"WHERE call_id IN ({placeholders(len(ids))}) ORDER BY call_id, seq",
                *ids,
            ):
                call_id, attempt = codec.attempt_from_row(row)
                by_id[call_id].attempts.append(attempt)
        hashes = sorted(set().union(*(codec.blob_refs(c.request) for c in calls)))
        texts: dict[str, str] = {}
        for chunk in chunks(hashes):
            for row in await conn.fetch(
                f"SELECT hash, text FROM blobs WHERE hash IN ({placeholders(len(chunk))})", *chunk
            ):
                texts[row[0]] = row[1]
        for c in calls:
            codec.restore(c.request, texts)
        return calls

    async def get_call(self, call_id: str) -> CallRecord | None:
        """One call with attempts and restored request text, or None."""
        async with self._read() as conn:
            rows = await conn.fetch(f"SELECT {_CALL_COLS} FROM calls WHERE id = ?", call_id)
            if not rows:
                return None
            return (await self._hydrate(conn, [codec.call_from_row(rows[0])]))[0]

    async def list_calls(
        self,
        *,
        route: str | None = None,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[CallRecord]:
        """Calls ordered by created_at (then id); `since` inclusive, `until` exclusive."""
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("route = ?", route),
            ("created_at >= ?", None if since is None else float(since)),
            ("created_at < ?", None if until is None else float(until)),
            ("user_id = ?", user),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_CALL_COLS} FROM calls{cond} ORDER BY created_at, id LIMIT ? OFFSET ?"
        async with self._read() as conn:
            rows = await conn.fetch(sql, *args, int(limit), int(offset))
            return await self._hydrate(conn, [codec.call_from_row(r) for r in rows])

    async def count_calls(self, *, route: str | None = None) -> int:
        """Number of calls, optionally for one route."""
        async with self._read() as conn:
            if route is None:
                rows = await conn.fetch("SELECT COUNT(*) FROM calls")
            else:
                rows = await conn.fetch("SELECT COUNT(*) FROM calls WHERE route = ?", route)
        return int(rows[0][0])

    async def count_attempts(self) -> int:
        """Number of attempt rows."""
        async with self._read() as conn:
            rows = await conn.fetch("SELECT COUNT(*) FROM attempts")
        return int(rows[0][0])

    # -- feedback ----------------------------------------------------------------------------

    @staticmethod
    def _feedback_where(
        route: str | None, since: float | None, source: str | None
    ) -> tuple[str, str, list[Any]]:
        """(join, conditions, args) shared by list_feedback and count_feedback."""
        join = " JOIN calls c ON c.id = f.call_id" if route is not None else ""
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("c.route = ?", route),
            ("f.created_at >= ?", None if since is None else float(since)),
            ("f.source = ?", source),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        return join, " AND ".join(where), args

    async def list_feedback(
        self,
        *,
        call_ids: Sequence[str] | None = None,
        route: str | None = None,
        since: float | None = None,
        source: str | None = None,
    ) -> list[FeedbackRecord]:
        """Feedback ordered by created_at (then id), filtered as given."""
        join, cond, args = self._feedback_where(route, since, source)
        base = f"SELECT {_FB_COLS_F} FROM feedback f{join}"
        queries: list[tuple[str, list[Any]]] = []
        if call_ids is None:
            queries.append((f"{base} WHERE {cond}" if cond else base, args))
        else:
            for ids in chunks(list(dict.fromkeys(call_ids))):
                extra = f" AND {cond}" if cond else ""
                queries.append(
                    (f"{base} WHERE f.call_id IN ({placeholders(len(ids))}){extra}", [*ids, *args])
                )
        out: list[FeedbackRecord] = []
        async with self._read() as conn:
            for sql, qargs in queries:
                out.extend(codec.feedback_from_row(r) for r in await conn.fetch(sql, *qargs))
        out.sort(key=lambda f: (f.created_at, f.id))
        return out

    async def count_feedback(self, *, route: str | None = None, since: float | None = None) -> int:
        """Number of feedback rows, optionally for one route and/or since a time."""
        join, cond, args = self._feedback_where(route, since, None)
        sql = f"SELECT COUNT(*) FROM feedback f{join}" + (f" WHERE {cond}" if cond else "")
        async with self._read() as conn:
            rows = await conn.fetch(sql, *args)
        return int(rows[0][0])
