"""Retrying one upstream target with tenacity: exponential backoff with jitter, Retry-After
honoured, only retryable errors retried, a per-attempt timeout and a total deadline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from gateway.config.settings import RetrySettings
from gateway.providers.base import UpstreamError
from gateway.store.records import Attempt

T = TypeVar("T")


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable


class _RetryAfterWait:
    """Backoff with jitter, but never shorter than the upstream's Retry-After."""

    def __init__(self, rs: RetrySettings) -> None:
        self._backoff = wait_exponential_jitter(multiplier=rs.initial_delay_s, max=rs.max_delay_s,
                                                jitter=rs.initial_delay_s)

    def __call__(self, state: RetryCallState) -> float:
        delay = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay


class _StopPastBudget(stop_base):
    """Stop when the next sleep is longer than allowed or would cross the deadline.

    tenacity computes the wait before asking stop, so `upcoming_sleep` is known here. A
    Retry-After longer than `max_delay_s` ends the retries: the client gets the 429 and
    the Retry-After itself, which beats holding its connection open.
    """

    def __init__(self, rs: RetrySettings, deadline: float) -> None:
        self._max_delay = rs.max_delay_s
        self._deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        sleep = state.upcoming_sleep
        return sleep > self._max_delay + 1e-9 or time.monotonic() + sleep >= self._deadline


async def _once(
    attempt_fn: Callable[[float], Awaitable[T]], rs: RetrySettings, deadline: float,
    attempts: list[Attempt], model: str, provider: str,
) -> T:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise UpstreamError("the request's deadline passed before the upstream answered", timeout=True)
    started, wall = time.monotonic(), time.time()
    try:
        result = await attempt_fn(min(rs.attempt_timeout_s, remaining))
    except UpstreamError as exc:
        attempts.append(Attempt(model, provider, exc.status, exc.message, (time.monotonic() - started) * 1000, wall))
        raise
    attempts.append(Attempt(model, provider, 200, None, (time.monotonic() - started) * 1000, wall))
    return result


async def call_with_retries(
    attempt_fn: Callable[[float], Awaitable[T]],
    rs: RetrySettings,
    *,
    deadline: float,
    attempts: list[Attempt],
    model: str,
    provider: str,
) -> T:
    """Run `attempt_fn(timeout_s)` until it succeeds, the error is not retryable, or the budget ends.

    Every try is appended to `attempts`. The last UpstreamError is re-raised.
    """
    try:
        return await _once(attempt_fn, rs, deadline, attempts, model, provider)
    except UpstreamError as exc:
        if not exc.retryable or rs.attempts <= 1:
            raise
        first_failure: UpstreamError | None = exc
    # Only a failed first try pays for tenacity's machinery (~10% of a request's CPU when built
    # every time). The first failure is replayed as tenacity's attempt 1, so its backoff, its
    # Retry-After and the attempt count all come out as if tenacity had made that try.
    retrying = AsyncRetrying(
        stop=stop_after_attempt(rs.attempts) | _StopPastBudget(rs, deadline),
        wait=_RetryAfterWait(rs),
        retry=retry_if_exception(_is_retryable),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            if first_failure is not None:
                replay, first_failure = first_failure, None
                raise replay
            return await _once(attempt_fn, rs, deadline, attempts, model, provider)
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
