"""The store's artifact rows: versions and their state transitions, mixed into `SqlStore`.

An artifact (records.py: `ArtifactRecord`) is one version of one route's learned thing; every
state change is a `transitions` row written in the same transaction, so history can be replayed
(the registry on top of these queries is gateway/store/artifacts.py). An index body's examples are
stored once per route, the row keeping their addresses (gateway/store/index_examples.py); these
queries hand back the whole body.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

from gateway.store import codec, index_examples
from gateway.store.dialect import Conn, Dialect, placeholders
from gateway.store.records import ArtifactKind, ArtifactRecord, Transition

_ART_COLS = ", ".join(codec.ARTIFACT_COLUMNS)
_HEAD_COLS = ", ".join("NULL" if c == "body" else c for c in codec.ARTIFACT_COLUMNS)
_TR_COLS = ", ".join(codec.TRANSITION_COLUMNS)
_ART_VALUES = f"({placeholders(len(codec.ARTIFACT_COLUMNS))})"
_TR_VALUES = f"({placeholders(len(codec.TRANSITION_COLUMNS))})"


class ArtifactQueries:
    """Artifact versions and transitions; `SqlStore` supplies `_read`, `_write` and `dialect`."""

    dialect: Dialect

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]: ...

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]: ...

    async def save_artifact(self, a: ArtifactRecord) -> None:
        """Insert an artifact or replace the one with the same (route, kind, version)."""
        updates = ", ".join(f"{c} = excluded.{c}" for c in codec.ARTIFACT_COLUMNS[3:])
        body, examples = index_examples.pack(a.route, a.kind, a.body)
        async with self._write() as conn:
            await index_examples.save_rows(conn, examples)
            await conn.execute(
                f"INSERT INTO artifacts ({_ART_COLS}) VALUES {_ART_VALUES} "
                f"ON CONFLICT (route, kind, version) DO UPDATE SET {updates}",
                *codec.artifact_row(replace(a, body=body)),
            )

    async def create_artifact(self, a: ArtifactRecord, created: Transition) -> bool:
        """Insert a new artifact with its creation transition, atomically; False (nothing written) when
        its (route, kind, version) exists: two replicas' learners raced for the same version id."""
        body, examples = index_examples.pack(a.route, a.kind, a.body)
        async with self._write() as conn:
            rows = await conn.fetch(
                f"INSERT INTO artifacts ({_ART_COLS}) VALUES {_ART_VALUES} "
                "ON CONFLICT (route, kind, version) DO NOTHING RETURNING version",
                *codec.artifact_row(replace(a, body=body)),
            )
            if not rows:
                return False
            await index_examples.save_rows(conn, examples)
            await conn.execute(
                f"INSERT INTO transitions ({_TR_COLS}) VALUES {_TR_VALUES}",
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
            return (await self._with_examples(conn, route, [codec.artifact_from_row(rows[0])]))[0] if rows else None

    async def artifact_versions(self, route: str, kind: ArtifactKind) -> list[str]:
        """The version ids of one route's artifact kind, and nothing else of them."""
        async with self._read() as conn:
            rows = await conn.fetch("SELECT version FROM artifacts WHERE route = ? AND kind = ?", route, kind)
        return [str(r[0]) for r in rows]

    async def list_artifacts(self, route: str, kind: ArtifactKind, *, bodies: bool = True) -> list[ArtifactRecord]:
        """All versions of one route's artifact kind, ordered by created_at (then version); with
        `bodies=False` each record's body is None (an index body holds every example)."""
        async with self._read() as conn:
            rows = await conn.fetch(
                f"SELECT {_ART_COLS if bodies else _HEAD_COLS} FROM artifacts WHERE route = ? AND kind = ? "
                "ORDER BY created_at, version",
                route,
                kind,
            )
            return await self._with_examples(conn, route, [codec.artifact_from_row(r) for r in rows])

    @staticmethod
    async def _with_examples(conn: Conn, route: str, recs: Sequence[ArtifactRecord]) -> list[ArtifactRecord]:
        """`recs` with their index examples back in their bodies (one read for all of them)."""
        if not any(index_examples.packed(rec.body) for rec in recs):
            return list(recs)
        examples = await index_examples.load(conn, route, (r for rec in recs for r in index_examples.refs_of(rec.body)))
        return [replace(rec, body=index_examples.unpack(rec.body, examples)) for rec in recs]

    async def forget_examples(self, route: str, example_ids: Sequence[str]) -> int:
        """Delete the stored index examples of `route` with these ids; how many rows went."""
        async with self._write() as conn:
            return await index_examples.delete(conn, route, example_ids)

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
                f"INSERT INTO transitions ({_TR_COLS}) VALUES {_TR_VALUES}",
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
