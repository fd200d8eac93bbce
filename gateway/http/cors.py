"""Browser clients: CORS for `[server] cors_origins`, as pure ASGI middleware outside auth and limits.

- A preflight (OPTIONS with Access-Control-Request-Method) is answered here, before any key
  check: browsers never send credentials on a preflight. An allowed origin gets 204 with the
  methods and the headers it asked for; any other gets 403 and no CORS headers, so the browser
  stops there.
- Other requests from an allowed origin get Access-Control-Allow-Origin, and the gateway's and
  the upstream's headers exposed to scripts (a browser app needs the call id to send feedback).
- Without API keys (the demo mode) anyone's web page could make a visitor's browser spend tokens
  with a "simple" cross-origin request, which browsers send without a preflight (text/plain or
  form bodies). Such a request is refused with 403 before it reaches a handler: a real client
  either sends `Content-Type: application/json` (which is preflighted) or is not a browser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PermissionDenied, error_response

_SIMPLE_TYPES = (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data")
_EXPOSED = (b"x-flywheel-call-id, x-flywheel-route, x-flywheel-variant, x-flywheel-cost-usd, x-request-id, "
            b"openai-processing-ms, retry-after, retry-after-ms, x-should-retry, x-ratelimit-limit-requests, "
            b"x-ratelimit-limit-tokens, x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens, "
            b"x-ratelimit-reset-requests, x-ratelimit-reset-tokens")
_METHODS = b"GET, POST, DELETE, OPTIONS"
_MAX_AGE = b"600"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _same_origin(scope: Scope, origin: bytes) -> bool:
    host = _header(scope, b"host")
    scheme = scope.get("scheme", "http").encode()
    return host is not None and origin == scheme + b"://" + host


def _simple(scope: Scope) -> bool:
    """A request a browser sends cross-origin without a preflight (the CORS "simple" request)."""
    if scope["method"] not in ("GET", "HEAD", "POST"):
        return False
    ctype = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
    return not ctype or ctype in _SIMPLE_TYPES


class CorsMiddleware:
    def __init__(self, app: ASGIApp, *, origins: Callable[[], Sequence[str]], keyless: Callable[[], bool]) -> None:
        self.app = app
        self._origins = origins  # getters: a config reload changes them
        self._keyless = keyless

    def _allowed(self, origin: bytes) -> bool:
        origins = self._origins()
        return "*" in origins or origin.decode("latin-1") in origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None or _same_origin(scope, origin):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await self._preflight(scope, origin, send)
            return
        if self._keyless() and scope["method"] == "POST" and _simple(scope):
            exc = PermissionDenied("Cross-origin requests to a gateway without API keys must be preflighted: "
                                   "send the body as Content-Type: application/json.", code="cors_not_preflighted")
            await error_response(exc)(scope, receive, send)
            return
        if not self._allowed(origin):
            await self.app(scope, receive, send)  # served, but the browser will not let the page read it
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                            (b"access-control-expose-headers", _EXPOSED)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, origin: bytes, send: Send) -> None:
        if not self._allowed(origin):
            await send({"type": "http.response.start", "status": 403, "headers": [(b"vary", b"Origin")]})
            await send({"type": "http.response.body", "body": b""})
            return
        asked = _header(scope, b"access-control-request-headers") or b""
        headers = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                   (b"access-control-allow-methods", _METHODS), (b"access-control-max-age", _MAX_AGE)]
        if asked:
            headers.append((b"access-control-allow-headers", asked))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
