"""The limiter's vocabulary: buckets, budgets, admissions, reservations, and the Limiter protocol."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

DAY_S = 86_400.0
WINDOW_S = 60.0  # requests and tokens *per minute*, as a sliding window (exact, not a fixed minute)

Refusal = Literal["requests", "tokens", "too_large", "budget", "unavailable"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limited scope, e.g. "key:alice", "route:bot", "user:alice:u42"; None: no limit of that kind."""

    name: str
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """A key's spend limit for the current period (`period_id` names it, e.g. "d20261206")."""

    key: str
    limit_usd: float
    period_id: str


@dataclass(slots=True)
class Reservation:
    """Tokens held for a call in flight; settled once to what the call really used."""

    call: str  # unique member id in every bucket
    buckets: tuple[str, ...]  # names of the buckets with a token limit
    tokens: int
    at: float  # when it was admitted (the limiter's own clock: ms for Redis, s in-process)
    settled: bool = False


@dataclass(slots=True)
class Admission:
    """The limiter's answer: admitted (with the headers to send) or refused (why, and how long to wait)."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    refusal: Refusal | None = None
    bucket: str = ""  # the bucket that refused
    retry_after_s: float = 0.0
    spent_usd: float = 0.0  # with refusal "budget"
    reservation: Reservation | None = None


# The reservation of the call this task serves: set at admission, settled by the gateway's sink
# when the call's record arrives (the pipeline runs in the request's context).
IN_FLIGHT: ContextVar[Reservation | None] = ContextVar("flywheel_reservation", default=None)


class Limiter(Protocol):
    """Counts requests, reserves tokens and checks budgets; `settle` and `add_spend` never block."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def admit(self, buckets: list[Bucket], tokens: int, budget: Budget | None, call: str) -> Admission: ...

    def settle(self, reservation: Reservation, used_tokens: int) -> None: ...

    def add_spend(self, key: str, cost_usd: float, now: float | None = None) -> None: ...

    async def spent(self, key: str, period_id: str) -> float: ...

    async def seed_spend(self, key: str, period_id: str, amount_usd: float) -> None: ...


def period_id(period: Literal["day", "month"], now: float | None = None) -> str:
    """The calendar period (UTC) a budget counts in: "d20261206" or "m202612"."""
    t = time.gmtime(time.time() if now is None else now)
    return f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}" if period == "day" else f"m{t.tm_year:04d}{t.tm_mon:02d}"


def period_start(period: Literal["day", "month"], now: float | None = None) -> float:
    """Epoch seconds at which the current period began (UTC)."""
    import calendar

    t = time.gmtime(time.time() if now is None else now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday if period == "day" else 1, 0, 0, 0)))


def estimate_tokens(body: dict[str, Any], default_max_tokens: int) -> int:
    """Tokens to reserve before a call: its prompt (~4 characters a token) plus what it may generate."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                chars += len(c)
            elif isinstance(c, list):
                chars += sum(len(p["text"]) for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    for name in ("input", "prompt"):  # embeddings, completions, responses
        v = body.get(name)
        if isinstance(v, str):
            chars += len(v)
        elif isinstance(v, list):
            chars += sum(len(x) if isinstance(x, str) else 4 for x in v)
    out = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    if not isinstance(out, int) or isinstance(out, bool) or out <= 0:
        out = 0 if "input" in body and "messages" not in body else default_max_tokens
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return chars // 4 + 1 + out * choices


def duration(seconds: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s}s"


def limit_headers(rpm: int | None, remaining_requests: int, reset_requests_s: float,
                  tpm: int | None, remaining_tokens: int, reset_tokens_s: float) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens}, as OpenAI names them."""
    h: dict[str, str] = {}
    if rpm is not None:
        h["x-ratelimit-limit-requests"] = str(rpm)
        h["x-ratelimit-remaining-requests"] = str(max(0, remaining_requests))
        h["x-ratelimit-reset-requests"] = duration(reset_requests_s)
    if tpm is not None:
        h["x-ratelimit-limit-tokens"] = str(tpm)
        h["x-ratelimit-remaining-tokens"] = str(max(0, remaining_tokens))
        h["x-ratelimit-reset-tokens"] = duration(reset_tokens_s)
    return h
