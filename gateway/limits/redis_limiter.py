"""The shared limiter: limits and budgets in one Redis, exact across every replica.

Each admission is one Lua script (atomic in Redis, one round trip): expire entries older than a
minute, check the budget, every bucket's request count and token total, and only if all pass,
record the request and reserve the tokens. Time is Redis's own clock (`TIME`), so replicas'
clocks do not matter. Per bucket: a sorted set of requests (member: call id), a sorted set of
token reservations (member: "call|tokens") and the running token total. Settling replaces a
reservation by the tokens used; spend is an INCRBYFLOAT per key and period.

Redis unreachable: `fail_open` admits without limits, else every limited call gets a 503; either
way the change of state is logged once (and once more when Redis is back).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.limits.base import WINDOW_S, Admission, Bucket, Budget, Refusal, Reservation, limit_headers, period_id

log = logging.getLogger("flywheel.limits")

# KEYS: per bucket (requests zset, tokens zset, token total), then the budget's spend key.
# ARGV: window ms, call, tokens, budget limit (-1: none), n buckets, then rpm, tpm per bucket (0: none).
# Returns {1, remaining requests, reset requests ms, remaining tokens, reset tokens ms, now ms}
#      or {0, refusal, bucket index, wait ms, spent}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local call = ARGV[2]
local tokens = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local cutoff = now - window
if budget >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[3 * n + 1]) or '0')
  if spent >= budget then return {0, 'budget', -1, 0, tostring(spent)} end
end
local function held(m) return tonumber(string.match(m, '|(%d+)$')) end
for i = 0, n - 1 do
  local rk, tk, sk = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local rpm, tpm = tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', cutoff)
    local count = redis.call('ZCARD', rk)
    if count + 1 > rpm then
      local first = redis.call('ZRANGE', rk, count + 1 - rpm - 1, count + 1 - rpm - 1, 'WITHSCORES')
      return {0, 'requests', i, tonumber(first[2]) + window - now, '0'}
    end
  end
  if tpm > 0 then
    if tokens > tpm then return {0, 'too_large', i, 0, '0'} end
    local old = redis.call('ZRANGEBYSCORE', tk, '-inf', cutoff)
    if #old > 0 then
      local freed = 0
      for _, m in ipairs(old) do freed = freed + held(m) end
      redis.call('DECRBY', sk, freed)
      redis.call('ZREMRANGEBYSCORE', tk, '-inf', cutoff)
    end
    local used = tonumber(redis.call('GET', sk) or '0')
    if used < 0 then used = 0; redis.call('SET', sk, 0) end
    if used + tokens > tpm then
      local need, freed, wait = used + tokens - tpm, 0, window
      local items = redis.call('ZRANGE', tk, 0, -1, 'WITHSCORES')
      for j = 1, #items, 2 do
        freed = freed + held(items[j])
        if freed >= need then wait = tonumber(items[j + 1]) + window - now; break end
      end
      return {0, 'tokens', i, wait, '0'}
    end
  end
end
local out = {1, 0, 0, 0, 0, now}
for i = 0, n - 1 do
  local rk, tk, sk = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local rpm, tpm = tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])
  if rpm > 0 then
    redis.call('ZADD', rk, now, call)
    redis.call('PEXPIRE', rk, window * 2)
    if i == 0 then
      out[2] = rpm - redis.call('ZCARD', rk)
      local first = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
      out[3] = tonumber(first[2]) + window - now
    end
  end
  if tpm > 0 then
    redis.call('ZADD', tk, now, call .. '|' .. tokens)
    local used = redis.call('INCRBY', sk, tokens)
    redis.call('PEXPIRE', tk, window * 2)
    redis.call('PEXPIRE', sk, window * 2)
    if i == 0 then
      out[4] = tpm - used
      local first = redis.call('ZRANGE', tk, 0, 0, 'WITHSCORES')
      out[5] = tonumber(first[2]) + window - now
    end
  end
end
return out
"""

# KEYS: per bucket (tokens zset, token total). ARGV: call, tokens reserved, tokens used.
SETTLE = """
local old = ARGV[1] .. '|' .. ARGV[2]
local new = ARGV[1] .. '|' .. ARGV[3]
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
for i = 1, #KEYS, 2 do
  local score = redis.call('ZSCORE', KEYS[i], old)
  if score then
    redis.call('ZREM', KEYS[i], old)
    redis.call('ZADD', KEYS[i], score, new)
    redis.call('INCRBY', KEYS[i + 1], delta)
  end
end
return 1
"""

MAX_CONNECTIONS = 64  # per replica: Redis answers a script in tens of microseconds, so few are busy at once
SPEND_TTL_S = {"d": 3 * 86_400, "m": 40 * 86_400}


class RedisLimiter:
    """`Limiter` on a Redis shared by every replica."""

    def __init__(self, url: str, *, prefix: str = "flywheel", fail_open: bool = True) -> None:
        self.url = url
        self.prefix = prefix
        self.fail_open = fail_open
        self._redis: aioredis.Redis | None = None
        self._admit: Any = None
        self._settle: Any = None
        self._healthy = True
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def client(self) -> aioredis.Redis:
        """The Redis connection pool (the lease shares it); RuntimeError before start()."""
        if self._redis is None:
            raise RuntimeError("the limiter has not started")
        return self._redis

    async def start(self) -> None:
        """Create the connection pool on the serving loop (it connects on first use)."""
        # A blocking pool: a burst beyond its connections waits for one (the default pool raises "Too
        # many connections" at 100). Short timeouts: a hung Redis turns into fail-open/closed quickly.
        pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=MAX_CONNECTIONS, timeout=1.0,
                                                        socket_timeout=1.0, socket_connect_timeout=1.0,
                                                        health_check_interval=10)
        self._redis = aioredis.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(ADMIT)
        self._settle = self._redis.register_script(SETTLE)

    async def stop(self) -> None:
        """Finish pending settlements, then close the pool."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _state(self, healthy: bool, exc: BaseException | None = None) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            if healthy:
                log.warning("Redis at %s is reachable again: limits are enforced", self.url)
            else:
                log.error("Redis at %s is unreachable (%s): limited calls are %s until it is back", self.url,
                          exc, "admitted without limits" if self.fail_open else "refused")

    async def admit(self, buckets: list[Bucket], tokens: int, budget: Budget | None, call: str) -> Admission:
        """One atomic check-and-reserve in Redis."""
        keys: list[str] = []
        argv: list[Any] = [int(WINDOW_S * 1000), call, tokens, -1 if budget is None else budget.limit_usd,
                           len(buckets)]
        for b in buckets:
            keys += [self._k("rl", b.name, "r"), self._k("rl", b.name, "t"), self._k("rl", b.name, "s")]
            argv += [b.rpm or 0, b.tpm or 0]
        if budget is not None:
            keys.append(self._k("spend", budget.key, budget.period_id))
        try:
            out = await self._admit(keys=keys, args=argv)
        except (RedisError, OSError) as exc:
            self._state(False, exc)
            return Admission(True) if self.fail_open else Admission(False, refusal="unavailable", retry_after_s=1.0)
        self._state(True)
        if int(out[0]) == 1:
            held = tuple(b.name for b in buckets if b.tpm)
            first = buckets[0] if buckets else None
            headers = limit_headers(first.rpm, int(out[1]), int(out[2]) / 1000, first.tpm, int(out[3]),
                                    int(out[4]) / 1000) if first else {}
            res = Reservation(call, held, tokens, float(out[5])) if held else None
            return Admission(True, headers, reservation=res)
        refusal = cast(Refusal, out[1].decode() if isinstance(out[1], bytes) else out[1])
        index = int(out[2])
        spent = float(out[4])
        bucket = buckets[index].name if index >= 0 else f"key:{budget.key if budget else ''}"
        return Admission(False, refusal=refusal, bucket=bucket, retry_after_s=max(0.0, int(out[3]) / 1000),
                         spent_usd=spent)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace the reservation by the tokens used, in the background (never blocks the caller)."""
        if reservation.settled or self._redis is None:
            return
        reservation.settled = True
        if used_tokens == reservation.tokens:
            return
        keys: list[str] = []
        for name in reservation.buckets:
            keys += [self._k("rl", name, "t"), self._k("rl", name, "s")]
        self._spawn(self._run(self._settle(keys=keys, args=[reservation.call, reservation.tokens, used_tokens])))

    def add_spend(self, key: str, cost_usd: float, now: float | None = None) -> None:
        """Add a finished call's cost to its key's day and month, in the background."""
        if self._redis is None or cost_usd <= 0:
            return
        pipe = self._redis.pipeline(transaction=False)
        for period in ("day", "month"):
            pid = period_id(period, now)  # type: ignore[arg-type]
            k = self._k("spend", key, pid)
            pipe.incrbyfloat(k, cost_usd)
            pipe.expire(k, SPEND_TTL_S[pid[0]])
        self._spawn(self._run(pipe.execute()))

    async def _run(self, aw: Any) -> None:
        try:
            await aw
        except (RedisError, OSError) as exc:
            self._state(False, exc)

    async def spent(self, key: str, period_id: str) -> float:
        """What `key` spent in the period, across every replica (0.0 when Redis is unreachable)."""
        try:
            v = await self.client.get(self._k("spend", key, period_id))
        except (RedisError, OSError) as exc:
            self._state(False, exc)
            return 0.0
        return float(v) if v is not None else 0.0

    async def seed_spend(self, key: str, period_id: str, amount_usd: float) -> None:
        """Start the period's count from the store's figure unless a replica already did."""
        try:
            await self.client.set(self._k("spend", key, period_id), repr(amount_usd), nx=True,
                                  ex=SPEND_TTL_S[period_id[0]])
        except (RedisError, OSError) as exc:
            self._state(False, exc)

