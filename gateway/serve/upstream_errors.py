"""The client-facing error for an upstream failure that survived retries and fallbacks: shared by
the one-shot path (gateway/serve/pipeline.py) and the streamed one (gateway/serve/stream_relay.py)."""

from __future__ import annotations

from gateway.errors import GatewayError, InvalidRequest, RateLimited, UpstreamFailed, UpstreamTimeout
from gateway.providers.base import UpstreamError


def to_gateway_error(exc: UpstreamError) -> GatewayError:
    """The client-facing error for an upstream failure that survived retries and fallbacks.

    A rejected request keeps the upstream's status, `type`, `code` and `param` (apps branch on
    `context_length_exceeded`); a 5xx keeps its status (SDKs map 500 and 502 to different
    exceptions); the upstream's request id, rate-limit and retry-after headers come along."""
    err: GatewayError
    upstream = exc.body.get("error") if isinstance(exc.body, dict) else None
    upstream = upstream if isinstance(upstream, dict) else {}
    code, param = upstream.get("code"), upstream.get("param")
    if exc.timeout:
        err = UpstreamTimeout(f"The upstream model did not answer in time: {exc.message}")
    elif exc.status == 429:
        headers = {"retry-after": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else {}
        err = RateLimited(f"The upstream model is rate limited: {exc.message}", headers=headers,
                          code=code if isinstance(code, str) else None)
    elif exc.status in (400, 404, 409, 413, 422):
        err = InvalidRequest(exc.message, status=exc.status if exc.status != 409 else 400,
                             code=code if isinstance(code, str) else "upstream_rejected_request",
                             param=param if isinstance(param, str) else None)
    else:
        status = exc.status if exc.status is not None and 500 <= exc.status < 600 else None
        err = UpstreamFailed(f"The upstream model failed: {exc.message}", status=status)
    if isinstance(err, RateLimited | InvalidRequest) and isinstance(upstream.get("type"), str):
        err.type = upstream["type"]
    for name, value in exc.headers.items():
        err.headers.setdefault(name, value)
    return err
