"""The store's queries, written once for both backends.

`SqlStore` implements the whole `Store` protocol on top of two hooks a backend provides:
`_write()` and `_read()`, async context managers yielding a `Conn` inside a write or a
read transaction. Placeholders and the few fragments that differ come from `self.dialect`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.store import codec, migrations
from gateway.store.console_queries import ConsoleQueries
from gateway.store.dialect import Conn, Dialect, DuplicateRows, placeholders
from gateway.store.records import ArtifactKind, ArtifactRecord, CallRecord, FeedbackRecord, Transition
from gateway.store.responses import ResponseQueries
from gateway.store.spend_queries import SpendQueries

log = logging.getLogger(__name__)
_ENCODE_SLICE = 32  # calls encoded between two yields to the event loop (~0.3 ms)

CHUNK = 500  # values per IN list: well under SQLite's and PostgreSQL's parameter limits

_CALL_COLS = ", ".join(codec.CALL_COLUMNS)
_USER = codec.CALL_COLUMNS.index("user_id")
_CREATED = codec.CALL_COLUMNS.index("created_at")
_FB_COLS = ", ".join(codec.FEEDBACK_COLUMNS)
_FB_COLS_F = ", ".join(f"f.{c}" for c in codec.FEEDBACK_COLUMNS)
_ART_COLS = ", ".join(codec.ARTIFACT_COLUMNS)
_TR_COLS = ", ".join(codec.TRANSITION_COLUMNS)


def _values(n: int) -> str:
    return f"({placeholders(n)})"


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


class SqlStore(ConsoleQueries, ResponseQueries, SpendQueries, ABC):
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
        for chunk in _chunks(sorted(hashes)):
            for row in await conn.fetch(
                f"SELECT user_hash, forgotten_at FROM forgotten_users WHERE user_hash IN ({placeholders(len(chunk))})",
                *chunk,
            ):
                out[row[0]] = float(row[1])
        return out

    async def _hydrate(self, conn: Conn, calls: list[CallRecord]) -> list[CallRecord]:
        """Attach attempts and restore blob texts for calls read from the calls table."""
        by_id = {c.id: c for c in calls}
        for ids in _chunks(list(by_id)):
            for row in await conn.fetch(
                f"SELECT {', '.join(codec.ATTEMPT_COLUMNS)} FROM attempts "
                f"WHERE call_id IN ({placeholders(len(ids))}) ORDER BY call_id, seq",
                *ids,
            ):
                call_id, attempt = codec.attempt_from_row(row)
                by_id[call_id].attempts.append(attempt)
        hashes = sorted(set().union(*(codec.blob_refs(c.request) for c in calls)))
        texts: dict[str, str] = {}
        for chunk in _chunks(hashes):
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

    async def insert_feedback(self, fb: FeedbackRecord) -> None:
        """Insert one feedback row; a known id is skipped."""
        async with self._write() as conn:
            if fb.user is not None:
                user = codec.user_hash(fb.user)
                if fb.created_at <= (await self._forgotten(conn, {user})).get(user, -1.0):
                    log.info("store: feedback of a forgotten user dropped on arrival")
                    return
            await conn.execute(
                f"INSERT INTO feedback ({_FB_COLS}) VALUES {_values(len(codec.FEEDBACK_COLUMNS))} "
                "ON CONFLICT (id) DO NOTHING",
                *codec.feedback_row(fb),
            )

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
            for ids in _chunks(list(dict.fromkeys(call_ids))):
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

    # -- artifacts ---------------------------------------------------------------------------

    async def save_artifact(self, a: ArtifactRecord) -> None:
        """Insert an artifact or replace the one with the same (route, kind, version)."""
        updates = ", ".join(f"{c} = excluded.{c}" for c in codec.ARTIFACT_COLUMNS[3:])
        async with self._write() as conn:
            await conn.execute(
                f"INSERT INTO artifacts ({_ART_COLS}) VALUES {_values(len(codec.ARTIFACT_COLUMNS))} "
                f"ON CONFLICT (route, kind, version) DO UPDATE SET {updates}",
                *codec.artifact_row(a),
            )

    async def create_artifact(self, a: ArtifactRecord, created: Transition) -> bool:
        """Insert a new artifact with its creation transition, atomically; False (nothing written) when
        its (route, kind, version) exists: two replicas' learners raced for the same version id."""
        async with self._write() as conn:
            rows = await conn.fetch(
                f"INSERT INTO artifacts ({_ART_COLS}) VALUES {_values(len(codec.ARTIFACT_COLUMNS))} "
                "ON CONFLICT (route, kind, version) DO NOTHING RETURNING version",
                *codec.artifact_row(a),
            )
            if not rows:
                return False
            await conn.execute(
                f"INSERT INTO transitions ({_TR_COLS}) VALUES {_values(len(codec.TRANSITION_COLUMNS))}",
                *codec.transition_row(created),
            )
        return True

    async def get_artifact(self, route: str, kind: ArtifactKind, version: str) -> ArtifactRecord | None:
        """One artifact, or None."""
        async with self._read() as conn:
            rows = await conn.fetch(
                f"SELECT {_ART_COLS} FROM artifacts WHERE route = ? AND kind = ? AND version = ?",
                route,
                kind,
                version,
            )
        return codec.artifact_from_row(rows[0]) if rows else None

    async def list_artifacts(self, route: str, kind: ArtifactKind) -> list[ArtifactRecord]:
        """All versions of one route's artifact kind, ordered by created_at (then version)."""
        async with self._read() as conn:
            rows = await conn.fetch(
                f"SELECT {_ART_COLS} FROM artifacts WHERE route = ? AND kind = ? "
                "ORDER BY created_at, version",
                route,
                kind,
            )
        return [codec.artifact_from_row(r) for r in rows]

    async def transition(self, t: Transition) -> None:
        """Move an artifact to `t.to_state` and append the transition row atomically."""
        key = (t.route, t.kind, t.version)
        async with self._write() as conn:
            rows = await conn.fetch(
                "SELECT state FROM artifacts WHERE route = ? AND kind = ? AND version = ?"
                + self.dialect.for_update,
                *key,
            )
            if not rows:
                raise KeyError(f"no artifact {t.route}/{t.kind}/{t.version}")
            if t.from_state is not None and rows[0][0] != t.from_state:
                raise ValueError(
                    f"artifact {t.route}/{t.kind}/{t.version} is {rows[0][0]!r}, not {t.from_state!r}"
                )
            await conn.execute(
                "UPDATE artifacts SET state = ? WHERE route = ? AND kind = ? AND version = ?",
                t.to_state,
                *key,
            )
            await conn.execute(
                f"INSERT INTO transitions ({_TR_COLS}) VALUES {_values(len(codec.TRANSITION_COLUMNS))}",
                *codec.transition_row(t),
            )

    async def list_transitions(self, route: str, kind: ArtifactKind | None = None) -> list[Transition]:
        """Transitions of one route (optionally one kind), oldest first."""
        sql = f"SELECT {_TR_COLS} FROM transitions WHERE route = ?"
        args: list[Any] = [route]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        async with self._read() as conn:
            rows = await conn.fetch(sql + " ORDER BY at, id", *args)
        return [codec.transition_from_row(r) for r in rows]

    # -- deletion ----------------------------------------------------------------------------

    async def _delete_calls(self, conn: Conn, ids: Sequence[str]) -> tuple[int, int]:
        """Delete calls with their attempts, feedback, blob refs and orphaned blobs.

        Returns (calls deleted, feedback deleted).
        """
        ph = placeholders(len(ids))
        await conn.execute(f"DELETE FROM attempts WHERE call_id IN ({ph})", *ids)
        # a stored Responses conversation is its call's (same id): forget and retention take it too
        await conn.execute(f"DELETE FROM responses WHERE id IN ({ph})", *ids)
        feedback = await conn.execute(f"DELETE FROM feedback WHERE call_id IN ({ph})", *ids)
        refs = await conn.fetch(f"SELECT DISTINCT hash FROM call_blobs WHERE call_id IN ({ph})", *ids)
        hashes = sorted({r[0] for r in refs})
        await conn.execute(f"DELETE FROM call_blobs WHERE call_id IN ({ph})", *ids)
        calls = await conn.execute(f"DELETE FROM calls WHERE id IN ({ph})", *ids)
        for chunk in _chunks(hashes):
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

    async def delete_older_than(self, ts: float, *, batch: int = 500) -> int:
        """Delete calls created before `ts` in batches; returns the number of calls deleted."""
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
        # A call that old arriving late is deleted by the next pass anyway: its tombstone can go.
        async with self._write() as conn:
            await conn.execute("DELETE FROM forgotten_users WHERE forgotten_at < ?", float(ts))
        return total
