"""Fixtures for the many-replicas tests: keys, a Redis prefix of the test's own, a config with limits."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.http.auth import hash_key
from tests.conftest import base_config

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix no other test (or run) uses."""
    return f"fwtest-{uuid.uuid4().hex[:10]}"


def keyed_config(upstream: str, tmp: Path, keys: dict[str, dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """base_config with virtual keys: {name: {settings}}; each key's secret is 'sk-NAME'."""
    cfg = base_config(upstream, tmp, **overrides)
    cfg["auth"] = {"admin_key_env": "FW_TEST_ADMIN_KEY",
                   "keys": {name: {"hash": "sha256:" + hash_key(f"sk-{name}"), **ks} for name, ks in keys.items()}}
    return cfg


PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def pg_url() -> Any:
    """A PostgreSQL store URL on a schema of the test's own (in the `test` database), dropped afterwards."""
    import asyncpg

    schema = f"r_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    yield f"{PG_URL}?search_path={schema}"
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
