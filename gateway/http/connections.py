"""Connection-level limits, enforced in uvicorn's HTTP protocol before any request reaches the app
(and so before authentication): request-head size and header count (431), the time a request head
may take to arrive (408: slowloris), open connections per process, and a graceful stop that never
resets a request already on its way over a keep-alive connection.

Why a protocol subclass: uvicorn's httptools protocol has no header limits (llhttp buffers a header
of any size: 20 unfinished 16 MB headers held ~370 MB here) and arms no timer until a first response
has been sent (an idle or slowloris connection was never closed). Its `timeout_keep_alive` bounds
the idle time between requests; `limit_concurrency` answers 503 but still accepts the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config.settings import ServerSettings
from gateway.errors import GatewayError, HeadersTooLarge, RequestTimeout, error_json
from gateway.http.protocol import CloseDelimitingHttpTools

# How long an idle keep-alive connection stays open once a graceful stop begins: a request the
# client sent just before may still be on its way, and closing a socket with unread data sends a
# reset (the client sees a TCP error, not an answer). One that arrives is answered, with
# `Connection: close`.
DRAIN_S = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """`[server]` limits on connections (gateway/config/settings.py ServerSettings)."""

    max_header_bytes: int = 32_768
    max_headers: int = 100
    header_timeout_s: float = 10.0
    max_connections: int = 4096


class _Rejected(Exception):
    """Raised from a parser callback: the request head broke a limit (answered by send_400_response)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `ConnectionLimits` (set on a subclass by
    `guarded_protocol`) and a graceful stop that drains idle keep-alive connections."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between a message's end (or the connection's start) and its head's end
        self._head_bytes = 0
        self._n_headers = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._reject: GatewayError | None = None
        self._draining = False

    # -- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.close()  # over the per-process bound: refused before it costs a parser's memory
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._drain_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            room = self.limits.max_header_bytes - self._head_bytes
            if len(data) > room:
                # Feed only what the head may hold: if the head is still open after it, the request
                # is refused before llhttp buffers any more of it.
                head, rest = data[:room], data[room:]
                self._head_bytes += len(head)
                super().data_received(head)
                if self.transport.is_closing():
                    return
                if self._in_head:
                    limit = self.limits.max_header_bytes
                    self._refuse(HeadersTooLarge(f"Request line and headers exceed the limit of {limit} bytes."))
                    return
                self.data_received(rest)  # the body, or a pipelined request (whose head is checked again)
                return
            self._head_bytes += len(data)
        super().data_received(data)

    # -- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._n_headers = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._n_headers += 1
        if self._n_headers > self.limits.max_headers:
            self._reject = HeadersTooLarge(f"More than {self.limits.max_headers} header fields.")
            raise _Rejected
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: the process is stopping

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._reject is not None:
            self._refuse(self._reject)
        else:
            super().send_400_response(msg)

    # -- graceful stop -------------------------------------------------------------------------
    def shutdown(self) -> None:
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # the request in progress is answered, then the connection closes
        elif self._head_bytes == 0:
            self._drain_timer = self.loop.call_later(DRAIN_S, self._close_if_idle)
        # else: a request head is arriving; it is answered with `Connection: close`

    def _close_if_idle(self) -> None:
        self._drain_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self._head_bytes == 0 and not self.transport.is_closing():
            self.transport.close()

    # -- helpers -------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # never sent a byte: nothing to answer
            return
        self._refuse(RequestTimeout(
            f"The request head did not arrive within {self.limits.header_timeout_s:g}s."))

    def _refuse(self, exc: GatewayError) -> None:
        """Answer `exc` (OpenAI-shaped) and close: the rest of the request is never read."""
        body = error_json(exc)
        head = (f"HTTP/1.1 {exc.status} {'Request Timeout' if exc.status == 408 else 'Request Header Fields Too Large'}"
                f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode("latin-1") + body)
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=…)` enforcing `limits`."""
    # CloseDelimitingHttpTools: streams to HTTP/1.0 clients without chunking (gateway/http/protocol.py)
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol, CloseDelimitingHttpTools), {"limits": limits})


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments that apply `[server]`'s connection limits."""
    limits = ConnectionLimits(max_header_bytes=server.max_header_bytes, max_headers=server.max_headers,
                              header_timeout_s=server.header_timeout_s, max_connections=server.max_connections)
    return {"http": guarded_protocol(limits), "timeout_keep_alive": server.keep_alive_s}
