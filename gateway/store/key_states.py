"""Virtual keys' states changed without a restart (disabled, rotated), shared by every replica
through the store, and the log of who changed them when. `KeyStateQueries` is mixed into
`SqlStore` (migration 020_keys).

Only SHA-256 hashes of secrets are stored, never a secret. config.toml is the seed: a row
overrides a configured key's hash only while that key's configured hash is still the one the row
was rotated from (`seed_hash`); editing the hash in config.toml wins again (gateway/keyring.py).
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from gateway.store.dialect import Conn

MIGRATION = """
CREATE TABLE key_states (
    name TEXT PRIMARY KEY,
    hash TEXT,
    seed_hash TEXT,
    previous_hash TEXT,
    previous_until DOUBLE PRECISION,
    disabled INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE key_events (
    id {serial_pk},
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    who TEXT NOT NULL,
    note TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX key_events_name_at ON key_events (name, at)
"""

_COLS = "name, hash, seed_hash, previous_hash, previous_until, disabled, updated_at, updated_by"


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the store says of one configured key (hashes are hex SHA-256, without `sha256:`)."""

    name: str
    hash: str | None = None  # the rotated secret's hash; None: never rotated (config's hash serves)
    seed_hash: str | None = None  # config's hash when it was rotated
    previous_hash: str | None = None  # the secret before the rotation, accepted until previous_until
    previous_until: float | None = None
    disabled: bool = False
    updated_at: float = 0.0
    updated_by: str = ""


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """One change to a key: who did what (disable, enable, rotate) when, and why."""

    name: str
    action: str
    who: str
    note: str
    at: float


class KeyStateQueries:
    """Read and change key states; mixed into `SqlStore`."""

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]: ...

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]: ...

    async def key_states(self) -> list[KeyState]:
        """Every key's stored state (keys never changed at run time have none)."""
        async with self._read() as conn:
            rows = await conn.fetch(f"SELECT {_COLS} FROM key_states ORDER BY name")
        return [KeyState(r[0], r[1], r[2], r[3], None if r[4] is None else float(r[4]), bool(r[5]), float(r[6]),
                         r[7]) for r in rows]

    async def save_key_state(self, state: KeyState, event: KeyEvent) -> None:
        """Replace one key's state and log the change, in one transaction."""
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLS.split(", ")[1:])
        async with self._write() as conn:  # an upsert: two replicas changing one key at once both succeed
            await conn.execute(f"INSERT INTO key_states ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                               f"ON CONFLICT (name) DO UPDATE SET {updates}",
                               state.name, state.hash, state.seed_hash, state.previous_hash, state.previous_until,
                               int(state.disabled), float(state.updated_at), state.updated_by)
            await conn.execute("INSERT INTO key_events (name, action, who, note, at) VALUES (?, ?, ?, ?, ?)",
                               event.name, event.action, event.who, event.note, float(event.at))

    async def key_events(self, name: str | None = None, *, limit: int = 200) -> list[KeyEvent]:
        """The newest changes to one key (or all), oldest first."""
        where = "WHERE name = ? " if name is not None else ""
        args: list[object] = [name] if name is not None else []
        async with self._read() as conn:
            rows = await conn.fetch(f"SELECT name, action, who, note, at FROM key_events {where}"
                                    f"ORDER BY at DESC, id DESC LIMIT {int(limit)}", *args)
        return [KeyEvent(r[0], r[1], r[2], r[3], float(r[4])) for r in reversed(rows)]
