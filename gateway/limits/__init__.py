"""Rate limits and spend budgets per virtual key, route and end user (`[limits]`, `[auth.keys.*]`).

    base.py            what a limit is (Bucket, Budget), what admitting a call returns (Admission),
                       the Limiter protocol, token estimates and OpenAI's x-ratelimit-* headers
    local.py           in-process limiter: exact, but per replica (each replica allows the full limit)
    redis_limiter.py   the shared limiter: one Redis, atomic Lua scripts, exact across replicas;
                       Redis unreachable -> `[limits] on_redis_error` = "open" or "closed"

`open_limiter(settings)` picks one: Redis when `[limits] redis_url` is set, else in-process.
Requests are counted and tokens reserved *before* the call (from max_tokens and the prompt's size),
then the reservation is settled to the tokens the call really used, so concurrency cannot
overshoot a token limit. Spend is added from each call's logged cost and checked before the next.
"""

from __future__ import annotations

from gateway.config.settings import Settings
from gateway.limits.base import Admission, Bucket, Budget, Limiter, Reservation
from gateway.limits.local import LocalLimiter

__all__ = ["Admission", "Bucket", "Budget", "Limiter", "LocalLimiter", "Reservation", "open_limiter"]


def open_limiter(settings: Settings) -> Limiter:
    """The limiter `[limits]` asks for (not connected yet: call `start()` on the serving loop)."""
    lim = settings.limits
    if lim.redis_url:
        from gateway.limits.redis_limiter import RedisLimiter  # redis is imported only when configured

        return RedisLimiter(lim.redis_url, prefix=lim.prefix, fail_open=lim.on_redis_error == "open")
    return LocalLimiter()
