"""The store's deletions: forgetting a user and the retention sweep, mixed into `SqlStore`.

Both delete calls in batches of at most `CHUNK` ids, each its own transaction so the writer's
transactions interleave: a call goes with its attempts, the feedback on it, its stored Responses
state, its blob refs and the blobs no other call references, and is subtracted from the hourly
roll-ups (rollups.py) in the same transaction. Forgetting also leaves a tombstone
(`forgotten_users`) that the insert path (sql_inserts.py) checks. Retention then sweeps orphans:
feedback older than the cut-off whose call never arrived, tombstones older than it, and roll-up
rows of hours before it that count nothing any more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from gateway.store import codec, rollups
from gateway.store.dialect import CHUNK, Conn, Dialect, chunks, placeholders

log = logging.getLogger("gateway.store.sql")  # one logger for the whole SqlStore, as before its split


class DeleteQueries:
    """Forget and retention deletes; `SqlStore` supplies `_read`, `_write` and `dialect`."""

    dialect: Dialect

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]: ...

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]: ...

    async def _delete_calls(self, conn: Conn, ids: Sequence[str]) -> tuple[int, int]:
        """Delete calls with their attempts, feedback, blob refs and orphaned blobs.

        Returns (calls deleted, feedback deleted).
        """
        if self.dialect.rollup_lock_shared:  # before any row lock (gateway/store/rollups.py)
            await conn.fetch(self.dialect.rollup_lock_shared)
        await rollups.subtract_calls(conn, ids)
        ph = placeholders(len(ids))
        await conn.execute(f"DELETE FROM attempts WHERE call_id IN ({ph})", *ids)
        # a stored Responses conversation is its call's (same id): forget and retention take it too
        await conn.execute(f"DELETE FROM responses WHERE id IN ({ph})", *ids)
        feedback = await conn.execute(f"DELETE FROM feedback WHERE call_id IN ({ph})", *ids)
        refs = await conn.fetch(f"SELECT DISTINCT hash FROM call_blobs WHERE call_id IN ({ph})", *ids)
        hashes = sorted({r[0] for r in refs})
        await conn.execute(f"DELETE FROM call_blobs WHERE call_id IN ({ph})", *ids)
        calls = await conn.execute(f"DELETE FROM calls WHERE id IN ({ph})", *ids)
        for chunk in chunks(hashes):
            hph = placeholders(len(chunk))
            if self.dialect.for_update:
                # Lock first, then check references in a fresh statement snapshot, so a
                # concurrent insert that re-references a blob is either seen or waits.
                await conn.fetch(
                    f"SELECT hash FROM blobs WHERE hash IN ({hph}) ORDER BY hash{self.dialect.for_update}",
                    *chunk,
                )
            await conn.execute(
                f"DELETE FROM blobs WHERE hash IN ({hph}) "
                "AND NOT EXISTS (SELECT 1 FROM call_blobs r WHERE r.hash = blobs.hash)",
                *chunk,
            )
        return calls, feedback

    # -- forget ------------------------------------------------------------------------------

    async def forget_user(self, user: str) -> tuple[int, int]:
        """Delete a user's calls (+attempts, +feedback on them) and the feedback they gave, and
        leave a tombstone: their calls and feedback made before now that reach the store later
        (queued in a running gateway, or spilled) are dropped on arrival."""
        async with self._write() as conn:
            if self.dialect.forget_lock:
                await conn.fetch(self.dialect.forget_lock)
            await conn.execute(
                "INSERT INTO forgotten_users (user_hash, forgotten_at) VALUES (?, ?) "
                "ON CONFLICT (user_hash) DO UPDATE SET forgotten_at = excluded.forgotten_at",
                codec.user_hash(user), time.time(),
            )  # fmt: skip
        calls = feedback = 0
        while True:
            async with self._write() as conn:
                rows = await conn.fetch("SELECT id FROM calls WHERE user_id = ? LIMIT ?", user, CHUNK)
                ids = [r[0] for r in rows]
                if ids:
                    c, f = await self._delete_calls(conn, ids)
                else:
                    if self.dialect.rollup_lock_shared:
                        await conn.fetch(self.dialect.rollup_lock_shared)
                    await rollups.subtract_user_feedback(conn, user)
                    c, f = 0, await conn.execute("DELETE FROM feedback WHERE user_id = ?", user)
            calls += c
            feedback += f
            if not ids:
                return calls, feedback
            await asyncio.sleep(0)

    async def user_row_ids(self, user: str) -> tuple[list[str], list[str]]:
        """(ids of the user's calls, ids of the feedback the user gave)."""
        async with self._read() as conn:
            calls = [r[0] for r in await conn.fetch("SELECT id FROM calls WHERE user_id = ?", user)]
            feedback = [r[0] for r in await conn.fetch("SELECT id FROM feedback WHERE user_id = ?", user)]
        return calls, feedback

    # -- retention ---------------------------------------------------------------------------

    async def _delete_orphan_feedback(self, conn: Conn, ts: float, limit: int) -> int:
        """Delete up to `limit` feedback rows created before `ts` whose call is not stored (it never
        arrived), with their calls' `rollup_waiting` rows once no feedback waits on them; returns how
        many. They are counted in no roll-up, so nothing is subtracted."""
        if self.dialect.rollup_lock:  # exclusive: a call inserted meanwhile would count feedback deleted here
            await conn.fetch(self.dialect.rollup_lock)
        rows = await conn.fetch(
            "SELECT id, call_id FROM feedback f WHERE created_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.id = f.call_id) ORDER BY created_at LIMIT ?", ts, limit)
        if rows:
            await conn.execute(f"DELETE FROM feedback WHERE id IN ({placeholders(len(rows))})", *(r[0] for r in rows))
            calls = sorted({r[1] for r in rows})
            await conn.execute(
                f"DELETE FROM rollup_waiting WHERE call_id IN ({placeholders(len(calls))}) "
                "AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.call_id = rollup_waiting.call_id)", *calls)
        return len(rows)

    async def delete_older_than(self, ts: float, *, batch: int = 500) -> int:
        """Delete calls created before `ts` in batches, then the feedback older than `ts` whose call
        never arrived; returns the number of calls deleted."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        total = 0
        while True:
            async with self._write() as conn:
                ids = [
                    r[0]
                    for r in await conn.fetch(
                        "SELECT id FROM calls WHERE created_at < ? ORDER BY created_at LIMIT ?",
                        float(ts),
                        min(batch, CHUNK),
                    )
                ]
                if ids:
                    total += (await self._delete_calls(conn, ids))[0]
            if len(ids) < min(batch, CHUNK):
                break
            await asyncio.sleep(0)  # let the writer's transactions in between batches
        orphans = 0
        while True:
            async with self._write() as conn:
                n = await self._delete_orphan_feedback(conn, float(ts), min(batch, CHUNK))
            orphans += n
            if n < min(batch, CHUNK):
                break
            await asyncio.sleep(0)
        if orphans:
            log.info("store: %d feedback rows whose call never arrived deleted by retention", orphans)
        # A call that old arriving late is deleted by the next pass anyway: its tombstone can go.
        async with self._write() as conn:
            await conn.execute("DELETE FROM forgotten_users WHERE forgotten_at < ?", float(ts))
            await rollups.drop_empty(conn, float(ts))
        return total
