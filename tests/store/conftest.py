"""Fixtures: a `store` parametrized over both backends, each test on a fresh schema/file.

PostgreSQL: one uniquely named database per test session (dropped at the end), and a fresh
schema per test inside it, so parallel runs and tests never see each other's rows.
Set FLYWHEEL_TEST_PG_URL to point elsewhere; when the server is unreachable the PostgreSQL
cases are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.store import open_store
from gateway.store.sql import SqlStore

PG_URL = os.environ.get("FLYWHEEL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin_sync(url: str, sql: str) -> None:
    # A thread of its own: this may be reached from inside a running event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin(url, sql)).result()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a database created for this test session and dropped afterwards."""
    name = f"flywheel_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        _admin_sync(PG_URL, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e}")
    yield urlsplit(PG_URL)._replace(path=f"/{name}", query="").geturl()
    _admin_sync(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store URL with nothing in it yet, for each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/flywheel.db"  # tmp_path is absolute: sqlite:////tmp/...
        return
    database: str = request.getfixturevalue("pg_database")
    schema = f"t_{secrets.token_hex(6)}"
    await _admin(database, f"CREATE SCHEMA {schema}")
    yield f"{database}?search_path={schema}"
    await _admin(database, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """A migrated store on each backend."""
    s = open_store(store_url)
    assert isinstance(s, SqlStore)
    await s.migrate()
    yield s
    await s.close()
