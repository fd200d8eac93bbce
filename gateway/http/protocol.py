"""uvicorn's httptools protocol, with streams to HTTP/1.0 clients close-delimited.

uvicorn sends any response without a Content-Length chunked, whatever the client's version, but
HTTP/1.0 has no chunked transfer coding (RFC 9112 section 6.1: a server must not send it to a 1.0
client), which then sees the chunk sizes as part of the body. For a 1.0 request this protocol
sends such a response with neither header and closes the connection at its end, which is how
HTTP/1.0 delimits a body of unknown length. `flywheel serve` runs uvicorn with it
(`http=CloseDelimitingHttpTools`); everything else is uvicorn's own code path.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

_UNBOUNDED = 1 << 62  # "expected length" of a body that ends when the connection does


class _CloseDelimitedCycle(RequestResponseCycle):
    """A request/response cycle of an HTTP/1.0 request."""

    _close_delimited = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            names = {bytes(name).lower() for name, _ in message.get("headers", ())}
            if (b"content-length" not in names and b"transfer-encoding" not in names
                    and self.scope["method"] != "HEAD" and message["status"] not in (204, 304)):
                # uvicorn would choose chunked here; a known "not chunked" with an open-ended length
                # makes it write the body as it is, and closing the connection ends it
                self._close_delimited = True
                self.chunked_encoding = False
                self.keep_alive = False
                self.expected_content_length = _UNBOUNDED
        elif self._close_delimited and message["type"] == "http.response.body" and not message.get("more_body"):
            self.expected_content_length = len(message.get("body", b""))  # the last piece: now complete
        await super().send(message)


class CloseDelimitingHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol whose HTTP/1.0 cycles close-delimit bodies of unknown length."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if cycle.scope.get("http_version") == "1.0":
            cycle.__class__ = _CloseDelimitedCycle  # same state, one method more: set before the app runs
        super()._start_asgi_task(cycle, app)
