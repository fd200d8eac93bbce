"""KeyRing: the virtual keys as every replica sees them — config.toml seeds them, the store says which
are disabled or rotated at run time, and each replica re-reads the store every `[auth] refresh_s`.

Disabling, enabling and rotating (the admin API, `flywheel keys disable|enable|rotate`) write one
row per key to the store (gateway/store/key_states.py) with who did it and when, so a change made
on one replica (or by the CLI) takes effect on every other within `refresh_s`, without a restart.
Only SHA-256 hashes are kept; a rotated key's new secret is returned once and never logged. A
rotation may leave the old secret working for a grace period (so clients can be switched over).

config.toml stays the seed and wins when edited: a stored rotation applies only while the key's
configured hash is the one it was rotated from, and a key disabled in config.toml is disabled
whatever the store says. Keys absent from config.toml do not exist, whatever the store holds.
The request path only does dictionary lookups (`lookup`, `disabled`); the store is never awaited there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from gateway.background import cancel_and_wait
from gateway.config.settings import AuthSettings, Settings
from gateway.errors import InvalidRequest, NotFound, Overloaded
from gateway.store.base import Store
from gateway.store.key_states import KeyEvent, KeyState

log = logging.getLogger("flywheel.keys")
_DONE = {"disable": "disabled", "enable": "enabled", "rotate": "rotated"}


def hash_key(key: str) -> str:
    """The hex SHA-256 of a virtual key, as config.toml and the store keep it (after `sha256:`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret() -> str:
    """A fresh virtual key (as `flywheel keys new` makes them)."""
    return "fw-" + secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class Rotated:
    """A rotation's result: the new secret (shown once) and until when the old one still works."""

    name: str
    secret: str
    old_valid_until: float | None


@dataclass(frozen=True, slots=True)
class _Table:
    """The effective keys, rebuilt when config or store state changes (read on every request)."""

    auth: AuthSettings
    hashes: Mapping[str, str]  # current hash -> key name
    grace: Mapping[str, tuple[str, float]]  # a rotated-out hash -> (key name, valid until)
    disabled: frozenset[str]


def effective_hash(configured: str, state: KeyState | None) -> str:
    """The hash a key's secret must have now: the rotated one while config.toml still names the
    hash it was rotated from, else config.toml's."""
    if state is not None and state.hash is not None and state.seed_hash == configured:
        return state.hash
    return configured


def build_table(auth: AuthSettings, states: Mapping[str, KeyState]) -> _Table:
    """The lookup tables for config `auth` with the store's `states` applied."""
    hashes: dict[str, str] = {}
    grace: dict[str, tuple[str, float]] = {}
    disabled: set[str] = set()
    for name, ks in auth.keys.items():
        st = states.get(name)
        current = effective_hash(ks.hash, st)
        hashes[current] = name
        if st is not None and current == st.hash and st.previous_hash and st.previous_until:
            grace[st.previous_hash] = (name, st.previous_until)
        if ks.disabled or (st is not None and st.disabled):
            disabled.add(name)
    return _Table(auth, hashes, grace, frozenset(disabled))


class KeyRing:
    """Config keys plus the store's run-time changes; a Service that refreshes them."""

    def __init__(self, settings: Callable[[], Settings], store: Callable[[], Store | None],
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._states: dict[str, KeyState] = {}
        self._table = build_table(settings().auth, {})
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False
        self._saves = 0  # changes made here; a read begun before one of them is stale

    # -- the request path -------------------------------------------------------------------------
    def _current(self) -> _Table:
        auth = self._settings().auth
        if self._table.auth is not auth:  # config reloaded: rebuild once, on the first request after
            self._table = build_table(auth, self._states)
        return self._table

    def configured(self) -> bool:
        """True when any virtual key is configured (else the API is open: demo mode)."""
        return bool(self._settings().auth.keys)

    def lookup(self, token_hash: str) -> str | None:
        """The key whose secret has this hash now (a rotated-out secret within its grace too), or None."""
        table = self._current()
        name = table.hashes.get(token_hash)
        if name is None and table.grace:
            old = table.grace.get(token_hash)
            if old is not None and self._clock() < old[1]:
                name = old[0]
        return name

    def disabled(self, name: str) -> bool:
        """True when the key is disabled (in config.toml or at run time)."""
        return name in self._current().disabled

    def state(self, name: str) -> KeyState | None:
        """The store's state of one key as last read (None: never changed at run time)."""
        return self._states.get(name)

    # -- refreshing -------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-read every key's state from the store."""
        store = self._store()
        if store is None:
            return
        saves = self._saves
        states = {s.name: s for s in await store.key_states()}
        if saves != self._saves:  # a change made here meanwhile may be missing from this read
            return
        if states != self._states:
            self._states = states
            self._table = build_table(self._settings().auth, states)

    async def start(self) -> None:
        """Read the stored states once, then every `[auth] refresh_s` in the background."""
        await self._refresh_logged()
        self._tasks.append(asyncio.create_task(self._run(), name="flywheel-keyring"))

    async def stop(self) -> None:
        """Stop refreshing."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings().auth.refresh_s)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        if not self._settings().auth.keys:
            return
        try:
            await self.refresh()
        except Exception as exc:  # the store is down or not migrated yet: keep the last states
            if not self._failing:  # said once per change, not at every refresh
                log.warning("reading key states from the store failed, keeping the last ones: %s", exc,
                            extra={"event": "keys_refresh_failed"})
            self._failing = True
            return
        if self._failing:
            log.info("key states read from the store again", extra={"event": "keys_refresh_ok"})
        self._failing = False

    # -- changes (admin API, CLI) -----------------------------------------------------------------
    def _configured_hash(self, name: str) -> str:
        ks = self._settings().auth.keys.get(name)
        if ks is None:
            raise NotFound(f"No virtual key named '{name}' is configured.", param="key", code="key_not_found")
        return ks.hash

    def _open_store(self) -> Store:
        store = self._store()
        if store is None:
            raise Overloaded("The store is not open: key changes cannot be recorded.", code="store_unavailable")
        return store

    async def _save(self, state: KeyState, action: str, who: str, note: str) -> None:
        store = self._open_store()
        try:
            await store.save_key_state(state, KeyEvent(state.name, action, who, note, state.updated_at))
        except Exception as exc:
            raise Overloaded(f"The store refused the key change: {type(exc).__name__}.",
                             code="store_unavailable") from exc
        self._saves += 1
        self._states[state.name] = state
        self._table = build_table(self._settings().auth, self._states)
        log.info("key %s %s by %s", state.name, _DONE[action], who,  # never the secret
                 extra={"event": f"key_{action}", "key": state.name})

    async def _fresh_state(self, name: str) -> KeyState:
        self._configured_hash(name)
        with contextlib.suppress(Exception):  # a failing read: the write below says so
            await self.refresh()
        return self._states.get(name) or KeyState(name)

    async def set_disabled(self, name: str, disabled: bool, *, who: str, note: str = "") -> KeyState:
        """Disable or enable a key on every replica (within `refresh_s`); logged with who and why."""
        st = await self._fresh_state(name)
        if not disabled and self._settings().auth.keys[name].disabled:
            raise InvalidRequest(f"The key '{name}' is disabled in config.toml: enable it there.", param="key",
                                 code="disabled_in_config", status=409)
        new = replace(st, disabled=disabled, updated_at=self._clock(), updated_by=who)
        await self._save(new, "disable" if disabled else "enable", who, note)
        return new

    async def rotate(self, name: str, *, who: str, note: str = "", grace_s: float = 0.0) -> Rotated:
        """Give a key a new secret; the old one stops working now, or after `grace_s` seconds."""
        if not grace_s >= 0:
            raise InvalidRequest("'grace_s' must be a number >= 0.", param="grace_s")
        st = await self._fresh_state(name)
        configured = self._configured_hash(name)
        secret = new_secret()
        now = self._clock()
        old = effective_hash(configured, st)
        until = now + grace_s if grace_s > 0 else None
        new = replace(st, hash=hash_key(secret), seed_hash=configured, previous_hash=old if until else None,
                      previous_until=until, updated_at=now, updated_by=who)
        await self._save(new, "rotate", who, note)
        return Rotated(name, secret, until)
