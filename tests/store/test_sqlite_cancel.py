"""A caller's timeout during SQLite's BEGIN must not leave the connection inside a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from gateway.store.sqlite import SqliteStore
from tests.store.factories import make_feedback


async def test_a_write_cancelled_while_waiting_for_the_lock_leaves_no_transaction_open(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = SqliteStore(str(path))
    await store.migrate()
    # another process holds SQLite's write lock, so the store's BEGIN IMMEDIATE waits on busy_timeout
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.ensure_future(store.insert_feedback(make_feedback("c1")))
        await asyncio.sleep(0.3)
        write.cancel()
        other.execute("COMMIT")  # the waiting BEGIN now succeeds on aiosqlite's thread
        with contextlib.suppress(asyncio.CancelledError):
            await write
        # the next write used to fail "cannot start a transaction within a transaction", for good
        await store.insert_feedback(make_feedback("c2"))
        assert await store.count_feedback() >= 1
    finally:
        other.close()
        await store.close()
