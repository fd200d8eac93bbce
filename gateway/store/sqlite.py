"""SQLite backend (aiosqlite), in WAL mode.

One connection writes (serialised by a lock, transactions opened with BEGIN IMMEDIATE so
concurrent processes queue on busy_timeout instead of failing); a second, read-only
connection serves reads, which WAL lets run alongside the writer. An in-memory database
has a single connection for both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.store.dialect import SQLITE, DuplicateRows, Row, insert_values_sql
from gateway.store.sql import SqlStore

BUSY_TIMEOUT_MS = 5000
# Each checkpoint fsyncs; the default (1000 pages, ~4 MB) made fsync the write bottleneck
# on a slow disk. ~40 MB of WAL between checkpoints keeps it off the critical path.
WAL_AUTOCHECKPOINT_PAGES = 10_000


class _Conn:
    """`Conn` over one aiosqlite connection (SQLite already uses `?` placeholders)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._db.execute(sql, args)
        count = cursor.rowcount
        await cursor.close()
        return max(count, 0)

    async def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], on_conflict: str
    ) -> None:
        await self._db.executemany(insert_values_sql(table, tuple(columns), on_conflict), rows)

    async def append_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        # SQLite has no faster bulk path than executemany. A row skipped as known voids the batch as in
        # PostgreSQL: the roll-ups (rollups.py) must count only the calls the redo finds new.
        cursor = await self._db.executemany(insert_values_sql(table, tuple(columns), "ON CONFLICT DO NOTHING"),
                                            rows)
        if cursor.rowcount != len(rows):
            raise DuplicateRows(f"{len(rows) - cursor.rowcount} known row(s) in {table}")

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._db.execute_fetchall(sql, args))


async def _begin(db: aiosqlite.Connection, begin: str) -> None:
    """Open a transaction on `db`, leaving none open if the caller is cancelled meanwhile.

    aiosqlite runs each statement on its own thread: cancelling the awaiting task (a caller's
    timeout, such as the feedback handler's store lookup) does not stop the BEGIN, which then
    completes with nobody left to end it. The connection stayed inside that transaction, so every
    later BEGIN failed with "cannot start a transaction within a transaction" and the store looked
    down for good (and a read transaction left open pins the WAL, which then grows without end).
    """
    started = asyncio.ensure_future(db.execute(begin))
    try:
        await asyncio.shield(started)
    except asyncio.CancelledError:
        # let the BEGIN finish on its thread, then end it, before the cancellation goes on
        with contextlib.suppress(Exception):
            await started
            await db.execute("ROLLBACK")
        raise


class SqliteStore(SqlStore):
    """The store in one SQLite file (or in memory for `:memory:`)."""

    dialect = SQLITE

    def __init__(self, path: str) -> None:
        """`path` is a filesystem path or `:memory:`; nothing is opened until first use."""
        self.path = path
        self._memory = path == ":memory:"
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._open_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    async def _connect(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._writer is not None and self._reader is not None:
            return self._writer, self._reader
        async with self._open_lock:
            if self._writer is None:
                if not self._memory:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # isolation_level=None: we issue BEGIN/COMMIT ourselves.
                writer = await aiosqlite.connect(self.path, isolation_level=None)
                await writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                if not self._memory:
                    await writer.execute("PRAGMA journal_mode = WAL")
                    # NORMAL is durable against application crashes in WAL mode; only an OS
                    # crash can lose the last transactions, and the writer batches anyway.
                    await writer.execute("PRAGMA synchronous = NORMAL")
                    await writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
                self._writer = writer
            if self._reader is None:
                if self._memory:
                    self._reader = self._writer
                else:
                    reader = await aiosqlite.connect(self.path, isolation_level=None)
                    await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    await reader.execute("PRAGMA query_only = ON")
                    self._reader = reader
        return self._writer, self._reader

    @staticmethod
    @asynccontextmanager
    async def _transaction(db: aiosqlite.Connection, begin: str) -> AsyncIterator[_Conn]:
        await _begin(db, begin)
        try:
            yield _Conn(db)
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        try:
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[_Conn]:
        writer, _ = await self._connect()
        async with self._write_lock, self._transaction(writer, "BEGIN IMMEDIATE") as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[_Conn]:
        writer, reader = await self._connect()
        lock = self._write_lock if reader is writer else self._read_lock
        async with lock, self._transaction(reader, "BEGIN") as conn:
            yield conn

    async def close(self) -> None:
        """Close both connections (idempotent)."""
        async with self._open_lock:
            reader, writer = self._reader, self._writer
            self._reader = self._writer = None
            if reader is not None and reader is not writer:
                await reader.close()
            if writer is not None:
                await writer.close()
