"""PostgreSQL backend (asyncpg) with a small connection pool.

The pool is created on first use, so a gateway can start while the database is down: the
writer spills, and the next call after the database is back creates the pool. Query
parameters in the URL other than libpq's own (e.g. `?search_path=s1`) become server settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from gateway.store.dialect import POSTGRES, Row
from gateway.store.sql import SqlStore

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0


class _Conn:
    """`Conn` over one asyncpg connection: `?` placeholders become `$n` here."""

    def __init__(self, con: Any) -> None:
        self._con = con

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._con.execute(POSTGRES.sql(sql), *args)
        # Command tags look like "DELETE 3" / "INSERT 0 1"; the last word is the row count.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._con.executemany(POSTGRES.sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._con.fetch(POSTGRES.sql(sql), *args))


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database."""

    dialect = POSTGRES

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 4) -> None:
        """`dsn` is a postgresql:// URL; nothing is opened until first use."""
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: Any = None
        self._open_lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                )
        return self._pool

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[_Conn]:
        pool = await self._get_pool()
        async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as con, con.transaction():
            yield _Conn(con)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[_Conn]:
        pool = await self._get_pool()
        async with (
            pool.acquire(timeout=CONNECT_TIMEOUT_S) as con,
            con.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield _Conn(con)

    async def close(self) -> None:
        """Close the pool (idempotent); connections still busy after 10 s are terminated."""
        async with self._open_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()
