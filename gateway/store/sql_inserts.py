"""The store's write path for calls and feedback: batch inserts, mixed into `SqlStore`.

Both take one transaction per batch and assume the rows are new (PostgreSQL then COPYs them);
a batch that meets a stored id (a re-ingested spill file, a batch retried after a lost commit)
is redone with ON CONFLICT clauses. Rows of users forgotten after they were made (tombstones in
`forgotten_users`) are dropped on arrival, and the hourly roll-ups (rollups.py) are kept in the
same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.store import codec, rollups
from gateway.store.dialect import Conn, Dialect, DuplicateRows, chunks, placeholders
from gateway.store.records import CallRecord, FeedbackRecord

log = logging.getLogger("gateway.store.sql")  # one logger for the whole SqlStore, as before its split
_ENCODE_SLICE = 32  # calls encoded between two yields to the event loop (~0.3 ms)

_USER = codec.CALL_COLUMNS.index("user_id")
_CREATED = codec.CALL_COLUMNS.index("created_at")


class InsertQueries:
    """Call and feedback batch inserts; `SqlStore` supplies `_write` and `dialect`."""

    dialect: Dialect

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]: ...

    # -- calls -------------------------------------------------------------------------------

    async def insert_calls(self, calls: Sequence[CallRecord]) -> None:
        """Insert calls, attempts and blobs in one transaction; known ids are skipped."""
        if not calls:
            return
        rows = codec.CallRows([], [], {}, [])
        for start in range(0, len(calls), _ENCODE_SLICE):
            codec.call_rows(calls[start:start + _ENCODE_SLICE], rows)
            if start + _ENCODE_SLICE < len(calls):
                await asyncio.sleep(0)  # a batch of hundreds must not stall the live requests on this loop
        await self.insert_call_rows(rows)

    async def insert_call_rows(self, rows: codec.CallRows) -> None:
        """`insert_calls` for calls already turned into rows by `codec.call_rows`."""
        if not rows.calls:
            return
        try:
            async with self._write() as conn:
                await self._insert_call_rows(conn, rows, fresh=True)
        except DuplicateRows:  # a re-ingested spill file, or a batch retried after a lost commit
            async with self._write() as conn:
                await self._insert_call_rows(conn, rows, fresh=False)

    async def _insert_call_rows(self, conn: Conn, rows: codec.CallRows, *, fresh: bool) -> None:
        """`fresh`: the calls are assumed new (PostgreSQL then COPYs them, ~40 % cheaper on both
        sides than INSERT); otherwise calls that exist are skipped with their attempts and refs."""
        rows = await self._without_forgotten(conn, rows)
        if self.dialect.rollup_lock_shared:  # before any row lock (gateway/store/rollups.py)
            await conn.fetch(self.dialect.rollup_lock_shared)
        new_calls = rows.calls if fresh else await self._not_stored(conn, rows.calls)
        if rows.blobs:
            # Blobs repeat across calls by design, so they always go through ON CONFLICT; sorted so
            # that PostgreSQL row locks are always taken in the same order.
            await conn.insert_many("blobs", ("hash", "text"), sorted(rows.blobs.items()),
                                   f"ON CONFLICT (hash) {self.dialect.blob_conflict}")
        tables = (("calls", codec.CALL_COLUMNS, rows.calls, "(id)"),
                  ("attempts", codec.ATTEMPT_COLUMNS, rows.attempts, "(call_id, seq)"),
                  ("call_blobs", ("call_id", "hash"), rows.refs, "(call_id, hash)"))
        for table, columns, values, key in tables:
            if not values:
                continue
            if fresh:
                await conn.append_many(table, columns, values)
            else:
                await conn.insert_many(table, columns, values, f"ON CONFLICT {key} DO NOTHING")
        await rollups.add_calls(conn, self.dialect, new_calls)  # last: the roll-up rows are the hot ones

    async def _not_stored(self, conn: Conn, calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The call rows whose id is not stored yet (the roll-ups must count only those)."""
        stored: set[str] = set()
        for ids in chunks([r[0] for r in calls]):
            stored.update(r[0] for r in await conn.fetch(
                f"SELECT id FROM calls WHERE id IN ({placeholders(len(ids))})", *ids))
        return [r for r in calls if r[0] not in stored]

    async def _without_forgotten(self, conn: Conn, rows: codec.CallRows) -> codec.CallRows:
        """`rows` less the calls of users forgotten after those calls were made."""
        users = {u: codec.user_hash(u) for u in {r[_USER] for r in rows.calls} if u is not None}
        forgotten = await self._forgotten(conn, set(users.values())) if users else {}
        drop = {r[0] for r in rows.calls
                if r[_USER] is not None and r[_CREATED] <= forgotten.get(users[r[_USER]], -1.0)}
        if not drop:
            return rows
        log.info("store: %d calls of forgotten users dropped on arrival", len(drop))
        return codec.without_calls(rows, drop)

    async def _forgotten(self, conn: Conn, hashes: set[str]) -> dict[str, float]:
        """user hash -> when that user was forgotten, for those of `hashes` that were; taken under
        the insert lock, so a concurrent forget is either seen here or sees this transaction's rows."""
        if self.dialect.insert_lock:
            await conn.fetch(self.dialect.insert_lock)
        out: dict[str, float] = {}
        for chunk in chunks(sorted(hashes)):
            for row in await conn.fetch(
                f"SELECT user_hash, forgotten_at FROM forgotten_users WHERE user_hash IN ({placeholders(len(chunk))})",
                *chunk,
            ):
                out[row[0]] = float(row[1])
        return out

    # -- feedback ----------------------------------------------------------------------------

    async def insert_feedback(self, fb: FeedbackRecord) -> None:
        """Insert one feedback row; a known id is skipped."""
        await self.insert_feedback_many([fb])

    async def insert_feedback_many(self, feedback: Sequence[FeedbackRecord]) -> None:
        """Insert feedback rows in one transaction and one bulk statement; known ids (stored, or
        earlier in the batch) are skipped and not counted in the roll-ups."""
        unique: dict[str, FeedbackRecord] = {}
        for fb in feedback:
            unique.setdefault(fb.id, fb)  # the first of a repeated id wins, as row by row it did
        if not unique:
            return
        try:
            async with self._write() as conn:
                await self._insert_feedback_rows(conn, list(unique.values()), fresh=True)
        except DuplicateRows:  # a re-ingested spill file, or a batch retried after a lost commit
            async with self._write() as conn:
                await self._insert_feedback_rows(conn, list(unique.values()), fresh=False)

    async def _insert_feedback_rows(self, conn: Conn, feedback: list[FeedbackRecord], *, fresh: bool) -> None:
        """`fresh`: the rows are assumed new and appended (PostgreSQL: one COPY, SQLite: one executemany;
        a statement per row held bench/store_write.py --feedback 1 to ~8,000 rows/s on both backends,
        ~19,000 now, 2026-12-06); otherwise the stored ids are read first, exactly: the roll-up lock
        (SQLite: its single writer) keeps other feedback writers out until this commits."""
        users = {codec.user_hash(fb.user) for fb in feedback if fb.user is not None}
        forgotten = await self._forgotten(conn, users) if users else {}
        if self.dialect.rollup_lock:  # before any row lock (gateway/store/rollups.py)
            await conn.fetch(self.dialect.rollup_lock)
        kept = [fb for fb in feedback
                if fb.user is None or fb.created_at > forgotten.get(codec.user_hash(fb.user), -1.0)]
        if len(kept) < len(feedback):
            log.info("store: %d feedback rows of forgotten users dropped on arrival", len(feedback) - len(kept))
        if not fresh:
            stored: set[str] = set()
            for ids in chunks([fb.id for fb in kept]):
                stored.update(r[0] for r in await conn.fetch(
                    f"SELECT id FROM feedback WHERE id IN ({placeholders(len(ids))})", *ids))
            kept = [fb for fb in kept if fb.id not in stored]
        rows = [codec.feedback_row(fb) for fb in kept]
        if rows and fresh:
            await conn.append_many("feedback", codec.FEEDBACK_COLUMNS, rows)
        elif rows:
            await conn.insert_many("feedback", codec.FEEDBACK_COLUMNS, rows, "ON CONFLICT (id) DO NOTHING")
        await rollups.add_feedback(conn, self.dialect, kept)  # per batch: its calls read once
