"""One learner at a time: a leader lease shared by every replica.

Learning cycles, canary decisions and the retention sweep run only on the replica that holds the
lease. With `[limits] redis_url` the lease is a Redis key (`SET NX PX`) holding this replica's id,
renewed every third of `[limits] lease_s`; each new holder takes the next *fencing token* (INCR),
which it logs and which a store write could be checked against. A holder that dies stops renewing:
the key expires after at most `lease_s`, and another replica takes it at its next attempt, so the
hand-over takes at most 4/3 × `lease_s`. A holder that cannot renew in time (Redis unreachable, a
stalled loop) stops acting as leader before its key could have expired: two replicas never both
believe they lead.

Without Redis, on a PostgreSQL store, the lease is a session-level advisory lock
(`pg_try_advisory_lock`) held on a connection of its own: PostgreSQL releases it when that session
ends, however the holder dies (its process killed, its connection cut: TCP keep-alives of a third
of `lease_s` bound a silent partition). Other replicas try every third of `lease_s`; the holder
checks its session as often and stops leading when it cannot. Its fencing token is the
transaction id at acquisition (`pg_current_xact_id()`), which only grows. On SQLite there is one
process: `LocalLease` always holds.

`confirm()` asks the lease's backend whether this replica still holds it with its token; the
learning loop's artifact writes check it first (learners/fencing.py), so a holder that lost the
lease mid-cycle cannot write over its successor's work.

`hold_route(route)` takes a route's *cycle lock* on the same backend (learners/route_lock.py):
every cycle takes it, the schedule's on the leader and `POST /admin/learn`'s on any replica, so two
cycles of one route never overlap across replicas; None when another replica's cycle holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from learners.route_lock import LocalHold, PostgresHold, RedisHold, RouteHold

log = logging.getLogger("flywheel.lease")

# KEYS: lease key, fence key. ARGV: holder id, ttl ms. Returns the holder's fencing token, or 0.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == false then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence, 'PX', ARGV[2])
  return fence
end
local holder, fence = string.match(cur, '^(.*)|(%d+)$')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(fence)
end
return 0
"""

# KEYS: lease key. ARGV: holder id. Deletes the lease only if this holder has it.
RELEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(.*)|%d+$') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease(Protocol):
    """Whether this replica leads now; `start`/`stop` run its renewal."""

    fence: int

    def held(self) -> bool: ...

    async def confirm(self) -> bool:
        """Whether the backend still says this replica holds the lease with `fence` (one round trip)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def hold_route(self, route: str) -> RouteHold | None:
        """Take `route`'s cycle lock, shared by every replica; None when another one holds it."""
        ...


class LocalLease:
    """The lease of a gateway without Redis: always held (one replica)."""

    fence = 1

    def held(self) -> bool:
        """Always: nothing else can lead."""
        return True

    async def confirm(self) -> bool:
        """Always."""
        return True

    async def start(self) -> None:
        """Nothing to run."""

    async def stop(self) -> None:
        """Nothing to release."""

    async def hold_route(self, route: str) -> RouteHold | None:
        """Always granted: one process (the learning loop's in-process lock serialises)."""
        return LocalHold()


class _Renewing:
    """The background task that renews a shared lease every third of its period."""

    ttl_s: float
    _task: asyncio.Task[None] | None

    async def renew(self) -> bool:
        """Take or keep the lease; True while this replica holds it."""
        raise NotImplementedError

    def _start_renewing(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="flywheel-lease")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            await self.renew()

    async def _stop_renewing(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RedisLease(_Renewing):
    """A renewed Redis lease with a fencing token (see the module docstring)."""

    def __init__(self, url: str, *, name: str = "learner", prefix: str = "flywheel", ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.key = f"{prefix}:lease:{name}"
        self.fence_key = f"{prefix}:lease:{name}:fence"
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fence = 0
        self._clock = clock
        self._valid_until = 0.0  # monotonic time after which this replica must not act as leader
        self._redis: Any = None
        self._acquire: Any = None
        self._task: asyncio.Task[None] | None = None
        self.acquired_at: float | None = None  # wall-clock time this replica last became leader

    def held(self) -> bool:
        """Whether this replica holds the lease now (with a safety margin before its key expires)."""
        return self._clock() < self._valid_until

    async def confirm(self) -> bool:
        """The lease key still names this holder and its fencing token."""
        if not self.held() or self._redis is None:
            return False
        try:
            cur = await self._redis.get(self.key)
        except Exception:
            return False
        return bool(cur == f"{self.holder}|{self.fence}".encode() and self.held())

    async def hold_route(self, route: str) -> RouteHold | None:
        """`{prefix}:cycle:{route}` set NX with a token, renewed while held (learners/route_lock.py).
        Works without `start` (the CLI's in-process cycle takes the lock and never leads)."""
        return await RedisHold.take(self._client(), f"{self.prefix}:cycle:{route}", self.holder, self.ttl_s)

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return self._redis

    async def start(self) -> None:
        """Try to take the lease now, then keep renewing (or trying) in the background."""
        self._client()
        self._acquire = self._redis.register_script(ACQUIRE)
        await self.renew()
        self._start_renewing()

    async def renew(self) -> bool:
        """One acquire-or-renew attempt; returns whether this replica holds the lease."""
        started = self._clock()
        try:
            fence = int(await self._acquire(keys=[self.key, self.fence_key],
                                            args=[self.holder, int(self.ttl_s * 1000)]))
        except Exception as exc:  # Redis down: stop leading before the key could expire elsewhere
            if self.acquired_at is not None:
                log.error("learner lease: renewal failed (%s); this replica stops leading", exc)
            self._valid_until = 0.0
            self.acquired_at = None
            return False
        # the key lives ttl from Redis's receipt, which is after `started`: leading until
        # started + ttl * 0.9 is safe even if the reply was slow
        self._valid_until = started + self.ttl_s * 0.9 if fence else 0.0
        if fence and fence != self.fence:
            self.fence = fence
            self.acquired_at = time.time()
            log.warning("learner lease taken by %s (fencing token %d): this replica runs the periodic jobs",
                        self.holder, fence)
        elif self.acquired_at is not None and not fence:
            self.acquired_at = None
            log.warning("learner lease lost by %s (not renewed in time): another replica runs the periodic jobs",
                        self.holder)
        return bool(fence)

    async def stop(self) -> None:
        """Stop renewing and hand the lease back at once (a clean stop needs no expiry)."""
        await self._stop_renewing()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                if self.held():
                    await self._redis.eval(RELEASE, 1, self.key, self.holder)
            self._valid_until = 0.0
            await self._redis.aclose()
            self._redis = None


class PostgresLease(_Renewing):
    """A session-level PostgreSQL advisory lock on a connection of its own (see the module docstring)."""

    def __init__(self, dsn: str, *, name: str = "learner", prefix: str = "flywheel", ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.name = f"{prefix}:lease:{name}"
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.fence = 0
        self.lock_key: int | None = None  # set on connect: the name within this database and schema
        self.backend_pid: int | None = None  # the session holding (or trying for) the lock
        self._clock = clock
        self._valid_until = 0.0
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self.acquired_at: float | None = None

    def held(self) -> bool:
        """Whether this replica holds the lock now (its session checked within 0.9 × `lease_s`)."""
        return self._clock() < self._valid_until

    async def confirm(self) -> bool:
        """The session that took the lock with this fencing token is alive (so it still holds it)."""
        if not self.held() or self._conn is None:
            return False
        try:
            return bool(await self._conn.fetchval("SELECT 1", timeout=self.ttl_s / 3)) and self.held()
        except Exception:
            return False

    async def start(self) -> None:
        """Try to take the lock now, then keep checking (or trying) in the background."""
        await self.renew()
        self._start_renewing()

    async def _session(self, what: str) -> tuple[Any, str]:
        """A connection of its own with keep-alives, and its 'database.schema'."""
        import asyncpg

        # keep-alives bound how long PostgreSQL keeps the lock of a holder cut off without a FIN
        probe = str(max(1, int(self.ttl_s / 3)))
        conn = await asyncpg.connect(self.dsn, timeout=self.ttl_s / 3, server_settings={
            "application_name": f"flywheel {what} {self.holder}"[:63], "tcp_keepalives_idle": probe,
            "tcp_keepalives_interval": probe, "tcp_keepalives_count": "2"})
        try:
            where = await conn.fetchval("SELECT current_database() || '.' || coalesce(current_schema(), '')",
                                        timeout=self.ttl_s / 3)
        except BaseException:
            conn.terminate()
            raise
        return conn, str(where)

    async def _connect(self) -> Any:
        conn, where = await self._session("lease")
        self.lock_key = advisory_key(where, self.name)
        self.backend_pid = conn.get_server_pid()
        return conn

    async def hold_route(self, route: str) -> RouteHold | None:
        """A session advisory lock on (database, schema, route), on a connection of the hold's own."""
        conn, where = await self._session("cycle")
        return await PostgresHold.take(conn, advisory_key(where, f"{self.prefix}:cycle:{route}"), self.ttl_s / 3)

    async def renew(self) -> bool:
        """One check of the session, or one attempt at the lock; returns whether this replica holds it."""
        started = self._clock()
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                self._valid_until = 0.0
                self._conn = await self._connect()
            if self.held():  # holding: the lock lives as long as the session does
                await self._conn.fetchval("SELECT 1", timeout=self.ttl_s / 3)
                got, fence = True, self.fence
            else:
                row = await self._conn.fetchrow(
                    "SELECT pg_try_advisory_lock($1) AS got, pg_current_xact_id()::text::bigint AS fence",
                    self.lock_key, timeout=self.ttl_s / 3)
                got, fence = bool(row["got"]), int(row["fence"])
        except Exception as exc:  # session gone: the lock went with it, stop leading now
            if self.acquired_at is not None:
                log.error("learner lease: the lock's PostgreSQL session failed (%s); this replica stops leading",
                          exc)
            await self._drop()
            return False
        self._valid_until = started + self.ttl_s * 0.9 if got else 0.0
        if got and fence != self.fence:
            self.fence = fence
            self.acquired_at = time.time()
            log.warning("learner lease taken by %s (PostgreSQL advisory lock, fencing token %d): "
                        "this replica runs the periodic jobs", self.holder, fence)
        return got

    async def _drop(self) -> None:
        self._valid_until = 0.0
        self.acquired_at = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def stop(self) -> None:
        """Stop checking and end the session: the lock is free at once."""
        await self._stop_renewing()
        conn, self._conn = self._conn, None
        self._valid_until = 0.0
        self.acquired_at = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self.ttl_s / 3)


def advisory_key(where: str, name: str) -> int:
    """One 64-bit advisory-lock key per (database.schema, name): tests and benches share a database."""
    digest = hashlib.blake2b(f"{where}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def open_lease(redis_url: str | None, *, prefix: str, ttl_s: float, store_url: str | None = None) -> Lease:
    """The one learner lease: on Redis when the gateway shares one, else an advisory lock on a
    PostgreSQL store, else (SQLite: one process) the always-held local one."""
    if redis_url:
        return RedisLease(redis_url, prefix=prefix, ttl_s=ttl_s)
    if store_url and store_url.startswith(("postgresql://", "postgres://")):
        return PostgresLease(store_url, prefix=prefix, ttl_s=ttl_s)
    return LocalLease()
