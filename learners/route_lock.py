"""The per-route cycle lock of each learner-lease backend: one cycle of a route at a time, across replicas.

(A route learns in two lanes, learners/loop.py; each takes a lock of its own, keyed `route` and
`route#grow`.)

The learner lease (learners/lease.py) decides which replica runs the *schedule*; a person's
`POST /admin/learn` runs a cycle on whichever replica is asked. Both take the route's cycle lock
first, through `Lease.hold_route`, so an on-demand cycle never overlaps the leader's scheduled
cycle of the same route (which made duplicate candidates). A `RouteHold` is what a taker gets:

- Redis: a key `{prefix}:cycle:{route}` set with `NX PX` to `holder|token` (the token from a
  per-route counter, so it only grows), renewed every third of `lease_s` by compare-and-expire
  and released by compare-and-delete: a holder that dies frees it within `lease_s`.
- PostgreSQL without Redis: a session-level `pg_try_advisory_lock` on a key derived from
  (database, schema, route), on a connection of the hold's own (not the lease's: its renewal
  task uses that one, and an asyncpg connection runs one query at a time). Closing it frees the
  lock; PostgreSQL frees it when the holder dies.
- SQLite (one process): always granted; the learning loop's in-process lock serialises.

`confirm()` says whether the hold is still this replica's (one round trip); the cycle's artifact
writes check it first (learners/fencing.py), so a holder that lost it cannot write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

log = logging.getLogger("flywheel.lease")

# KEYS: lock key, token counter. ARGV: holder id, ttl ms. The new token, or 0 when someone holds it.
TAKE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lock key. ARGV: holder|token, ttl ms. 1 when renewed (still this holder's), else 0.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lock key. ARGV: holder|token. Deletes the lock only if this hold still has it.
FREE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RouteHold(Protocol):
    """A route's cycle lock, held by this replica until `release`."""

    fence: int  # the hold's token (logged; a newer holder's is larger)

    async def confirm(self) -> bool:
        """Whether the backend still says this replica holds the route's cycle lock."""
        ...

    async def release(self) -> None:
        """Free the lock (idempotent)."""
        ...


class LocalHold:
    """The hold of a single-process gateway: nothing else can run the route's cycle."""

    fence = 1

    async def confirm(self) -> bool:
        """Always."""
        return True

    async def release(self) -> None:
        """Nothing to free."""


class RedisHold:
    """A route's cycle lock as a renewed Redis key (see the module docstring)."""

    def __init__(self, redis: Any, key: str, value: str, fence: int, ttl_s: float) -> None:
        self._redis = redis
        self.key = key
        self.value = value
        self.fence = fence
        self.ttl_s = ttl_s
        self._lost = False
        self._task = asyncio.create_task(self._renew(), name=f"flywheel-cycle-lock {key}")

    @classmethod
    async def take(cls, redis: Any, key: str, holder: str, ttl_s: float) -> RedisHold | None:
        """The route's lock for `holder`, or None when another holder has it."""
        token = int(await redis.eval(TAKE, 2, key, f"{key}:fence", holder, int(ttl_s * 1000)))
        return cls(redis, key, f"{holder}|{token}", token, ttl_s) if token else None

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                renewed = bool(await self._redis.eval(RENEW, 1, self.key, self.value, int(self.ttl_s * 1000)))
            except Exception as exc:  # Redis down: the key may expire and be taken elsewhere
                log.error("cycle lock %s: renewal failed (%s); this cycle's writes stop", self.key, exc)
                renewed = False
            if not renewed:
                self._lost = True
                return

    async def confirm(self) -> bool:
        """The key still holds this holder and token."""
        if self._lost:
            return False
        try:
            return bool(await self._redis.get(self.key) == self.value.encode())
        except Exception:
            return False

    async def release(self) -> None:
        """Stop renewing and delete the key if it is still this hold's."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            await self._redis.eval(FREE, 1, self.key, self.value)


class PostgresHold:
    """A route's cycle lock as a session-level advisory lock on a connection of its own."""

    def __init__(self, conn: Any, fence: int, timeout_s: float) -> None:
        self._conn = conn
        self.fence = fence
        self._timeout_s = timeout_s

    @classmethod
    async def take(cls, conn: Any, key: int, timeout_s: float) -> PostgresHold | None:
        """The lock `key` on `conn` (which the hold then owns), or None (and `conn` closed) when
        another session has it."""
        try:
            row = await conn.fetchrow(
                "SELECT pg_try_advisory_lock($1) AS got, pg_current_xact_id()::text::bigint AS fence",
                key, timeout=timeout_s)
        except BaseException:
            conn.terminate()
            raise
        if not row["got"]:
            await _close(conn, timeout_s)
            return None
        return cls(conn, int(row["fence"]), timeout_s)

    async def confirm(self) -> bool:
        """The session holding the lock is alive (so it still holds it)."""
        if self._conn.is_closed():
            return False
        try:
            return bool(await self._conn.fetchval("SELECT 1", timeout=self._timeout_s))
        except Exception:
            return False

    async def release(self) -> None:
        """End the session: the lock is free at once."""
        await _close(self._conn, self._timeout_s)


async def _close(conn: Any, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout_s)
    except Exception:
        conn.terminate()
