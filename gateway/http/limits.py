"""Request body size (413) and overload (503 + Retry-After) limits, as pure ASGI middleware."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import Overloaded, PayloadTooLarge, error_response


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body exceeds the gateway's limit of {self.max_body} bytes.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await error_response(self._too_large())(scope, receive, send)
                return
        if self.in_flight >= self.max_concurrency:
            exc = Overloaded("The gateway is at capacity; retry shortly.", headers={"retry-after": "1"})
            await error_response(exc)(scope, receive, send)
            return
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    # chunked bodies have no content-length: the handler renders this as a 413
                    raise self._too_large()
            return message

        self.in_flight += 1
        try:
            await self.app(scope, counted_receive, send)
        finally:
            self.in_flight -= 1
