"""One learner at a time: a leader lease shared by every replica.

Learning cycles, canary decisions and the retention sweep run only on the replica that holds the
lease. With `[limits] redis_url` the lease is a Redis key (`SET NX PX`) holding this replica's id,
renewed every third of `[limits] lease_s`; each new holder takes the next *fencing token* (INCR),
which it logs and which a store write could be checked against. A holder that dies stops renewing:
the key expires after at most `lease_s`, and another replica takes it at its next attempt, so the
hand-over takes at most 4/3 × `lease_s`. A holder that cannot renew in time (Redis unreachable, a
stalled loop) stops acting as leader before its key could have expired: two replicas never both
believe they lead. Without Redis there is one replica as far as the gateway knows: `LocalLease`
always holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

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

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class LocalLease:
    """The lease of a gateway without Redis: always held (one replica)."""

    fence = 1

    def held(self) -> bool:
        """Always: nothing else can lead."""
        return True

    async def start(self) -> None:
        """Nothing to run."""

    async def stop(self) -> None:
        """Nothing to release."""


class RedisLease:
    """A renewed Redis lease with a fencing token (see the module docstring)."""

    def __init__(self, url: str, *, name: str = "learner", prefix: str = "flywheel", ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.key = f"{prefix}:lease:{name}"
        self.fence_key = f"{prefix}:lease:{name}:fence"
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

    async def start(self) -> None:
        """Try to take the lease now, then keep renewing (or trying) in the background."""
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._acquire = self._redis.register_script(ACQUIRE)
        await self.renew()
        self._task = asyncio.create_task(self._loop(), name="flywheel-lease")

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

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            await self.renew()

    async def stop(self) -> None:
        """Stop renewing and hand the lease back at once (a clean stop needs no expiry)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._redis is not None:
            with contextlib.suppress(Exception):
                if self.held():
                    await self._redis.eval(RELEASE, 1, self.key, self.holder)
            self._valid_until = 0.0
            await self._redis.aclose()
            self._redis = None


def open_lease(redis_url: str | None, *, prefix: str, ttl_s: float) -> Lease:
    """A Redis lease when the gateway shares a Redis, else the always-held local one."""
    return RedisLease(redis_url, prefix=prefix, ttl_s=ttl_s) if redis_url else LocalLease()
