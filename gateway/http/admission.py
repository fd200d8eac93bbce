"""Rate limits and budgets at the door: count, reserve and check a call before it reaches a handler.

Only the endpoints that call a model are limited (chat, completions, responses, embeddings):
feedback, `GET /v1/models` and the admin API never consume a key's limits. The JSON body is
read here (and replayed to the handler) because the tokens to reserve depend on it; a body that
is not JSON reserves only the default and the handler then answers 400. Admitted responses carry
OpenAI's x-ratelimit-* headers; refusals are 429s with Retry-After (code "budget_exceeded" for
a spent budget).
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.config.settings import KeySettings, Settings
from gateway.errors import GatewayError, Overloaded, RateLimited
from gateway.limits import Admission, Bucket, Budget, Limiter
from gateway.limits.base import IN_FLIGHT, estimate_tokens, period_id
from gateway.observability import metrics

_PROCESS = uuid.uuid4().hex[:12]
_calls = itertools.count()

LIMITED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"})


def buckets_for(settings: Settings, key: str | None, ks: KeySettings | None, route: str | None,
                user: str | None) -> list[Bucket]:
    """The buckets a call counts in: its key's (first: the one the headers describe), its route's,
    its (key, user) pair's, each only when configured."""
    out: list[Bucket] = []
    if ks is not None and (ks.rpm or ks.tpm):
        out.append(Bucket(f"key:{key}", ks.rpm, ks.tpm))
    lim = settings.limits
    rl = lim.routes.get(route) if route is not None else None
    if rl is not None and (rl.rpm or rl.tpm):
        out.append(Bucket(f"route:{route}", rl.rpm, rl.tpm))
    if lim.per_user is not None and user and (lim.per_user.rpm or lim.per_user.tpm):
        out.append(Bucket(f"user:{key or '-'}:{user}", lim.per_user.rpm, lim.per_user.tpm))
    return out


def refusal_error(adm: Admission, key: str | None, budget: Budget | None) -> GatewayError:
    """The client-facing error for a refused admission."""
    wait = str(max(1, math.ceil(adm.retry_after_s)))
    if adm.refusal == "budget":
        assert budget is not None
        return RateLimited(f"The budget of key '{key}' is spent: ${adm.spent_usd:.4f} of ${budget.limit_usd:.4f} "
                           f"this {'day' if budget.period_id[0] == 'd' else 'month'} (UTC).",
                           code="budget_exceeded")
    if adm.refusal == "unavailable":
        return Overloaded("The rate limiter is unavailable; retry shortly.", headers={"retry-after": wait})
    if adm.refusal == "too_large":
        return RateLimited(f"Request too large for {adm.bucket}: it needs more tokens than its per-minute limit "
                           "allows. Lower max_tokens or the prompt.", code="tokens_exceeded")
    what = "Requests" if adm.refusal == "requests" else "Tokens"
    return RateLimited(f"Rate limit reached for {adm.bucket}: {what} per minute. Retry after {wait}s.",
                       headers={"retry-after": wait})


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a `receive` that replays it to the app before passing through."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


class Admitter:
    """Decides whether a model call may start, for the auth middleware."""

    def __init__(self, settings: Callable[[], Settings], limiter: Limiter) -> None:
        self._settings = settings
        self.limiter = limiter

    def applies(self, scope: Scope, key: str | None, ks: KeySettings | None) -> bool:
        """Whether this request may be limited at all (cheap: no body is read otherwise)."""
        if scope["method"] != "POST" or scope["path"] not in LIMITED_PATHS:
            return False
        lim = self._settings().limits
        return bool((ks is not None and (ks.rpm or ks.tpm or ks.budget_usd is not None)) or lim.routes or lim.per_user)

    async def admit(self, scope: Scope, receive: Receive, key: str | None,
                    ks: KeySettings | None) -> tuple[Admission, Receive]:
        """Read the body, then count the request and reserve its tokens; raises the refusal."""
        raw, receive = await read_body(receive)
        try:
            body: Any = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        body = body if isinstance(body, dict) else {}
        settings = self._settings()
        model, user = body.get("model"), body.get("user")
        route = model if isinstance(model, str) else None
        buckets = buckets_for(settings, key, ks, route, user if isinstance(user, str) else None)
        budget = None
        if ks is not None and ks.budget_usd is not None and key is not None:
            budget = Budget(key, ks.budget_usd, period_id(ks.budget_period))
        if not buckets and budget is None:
            return Admission(True), receive
        tokens = estimate_tokens(body, settings.limits.default_max_tokens)
        call = f"{_PROCESS}.{next(_calls)}"  # unique in every bucket's sorted set, across replicas
        adm = await self.limiter.admit(buckets, tokens, budget, call)
        if not adm.allowed:
            metrics.RATE_LIMITED.labels(key or "", adm.refusal or "").inc()
            raise refusal_error(adm, key, budget)
        return adm, receive


def with_headers(send: Send, headers: dict[str, str]) -> Send:
    """`send` adding `headers` to the response start (the gateway's own limits win over an upstream's)."""
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]
    names = {k for k, _ in extra}

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k not in names]
            message = {**message, "headers": kept + extra}
        await send(message)

    return sender


__all__ = ["IN_FLIGHT", "Admitter", "buckets_for", "refusal_error", "with_headers"]
