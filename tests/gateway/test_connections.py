"""Connection limits before authentication, a graceful stop that resets nothing, and a failed start
that exits (issue #18, items 4, 6 and 11), against the real app served by uvicorn with [server]'s
limits (gateway/http/connections.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import uvicorn

from flywheel.app import create_app
from gateway.config.settings import parse_settings
from gateway.http.connections import uvicorn_options
from tests.conftest import base_config, free_port

LIMITS = {"max_header_bytes": 4096, "max_headers": 20, "header_timeout_s": 0.5, "keep_alive_s": 0.5,
          "max_connections": 30}
CHAT = orjson.dumps({"model": "bot", "messages": [{"role": "user", "content": "hi"}]})


@dataclass
class Served:
    port: int
    server: uvicorn.Server
    thread: threading.Thread


@pytest.fixture
def served(fake_upstream: str, tmp_path: Path) -> Iterator[Served]:
    cfg = base_config(fake_upstream, tmp_path, server=dict(LIMITS))
    # a virtual key: an unauthenticated request would get a 401, so a 431/408 proves the limit came first
    cfg["auth"] = {"keys": {"app": {"hash": "sha256:" + "0" * 64}}}
    settings = parse_settings(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", loop="asyncio", **uvicorn_options(settings.server)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "gateway did not start"
        time.sleep(0.02)
    yield Served(port, server, thread)
    server.should_exit = True
    thread.join(30)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (raises ConnectionResetError on a reset)."""
    sock.settimeout(timeout)
    out = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return out
        out += data


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head and content-length body) from a connection that stays open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, body = raw.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += sock.recv(65536)
    return raw


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_an_oversized_header_is_431_before_authentication(served: Served) -> None:
    with _connect(served.port) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8000 + b"\r\n\r\n")
        raw = _read_all(s)
    assert _status(raw) == 431
    assert b"connection: close" in raw.lower()
    assert orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"


def test_an_unfinished_huge_header_is_refused_without_buffering_it(served: Served) -> None:
    with _connect(served.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nx-big: " + b"a" * 5000)  # never finished
        raw = _read_all(s)
    assert _status(raw) == 431


def test_too_many_headers_is_431(served: Served) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(30))
    with _connect(served.port) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        raw = _read_all(s)
    assert _status(raw) == 431


def test_a_slowloris_head_gets_408_after_the_header_timeout(served: Served) -> None:
    with _connect(served.port) as s:
        started = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        for _ in range(3):  # a byte now and then does not extend the head's deadline
            time.sleep(0.1)
            s.sendall(b"x")
        raw = _read_all(s)
        elapsed = time.monotonic() - started
    assert _status(raw) == 408
    assert 0.4 < elapsed < 2.0


def test_a_silent_connection_is_closed_after_the_header_timeout(served: Served) -> None:
    with _connect(served.port) as s:
        started = time.monotonic()
        assert _read_all(s) == b""
        assert time.monotonic() - started < 2.0


def test_an_idle_keep_alive_connection_is_closed(served: Served) -> None:
    with _connect(served.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        started = time.monotonic()
        raw = _read_all(s)
    assert _status(raw) == 200
    assert time.monotonic() - started < 2.0  # keep_alive_s = 0.5


def test_connections_over_the_limit_are_closed(served: Served) -> None:
    held = [_connect(served.port) for _ in range(LIMITS["max_connections"])]
    try:
        time.sleep(0.1)
        with _connect(served.port) as extra:
            assert _read_all(extra, timeout=1.0) == b""  # closed at once, not held until a timeout
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")  # the admitted ones still work
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()


def test_graceful_stop_answers_requests_already_sent_on_keep_alive_connections(served: Served) -> None:
    conns = [_connect(served.port) for _ in range(20)]
    request = (b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    for s in conns:  # each becomes an idle keep-alive connection
        s.sendall(request)
        assert _read_response(s).startswith(b"HTTP/1.1 200")
    served.server.should_exit = True
    for i, s in enumerate(conns):  # requests sent while the stop begins, spread over its first 200 ms
        time.sleep(0.01 if i else 0.0)
        s.sendall(request)
    statuses = []
    for s in conns:
        raw = _read_all(s)  # an answer, then the server's clean close; a reset raises here
        statuses.append(_status(raw))
        s.close()
    assert set(statuses) <= {200, 503}


def test_a_failed_start_exits_non_zero(fake_upstream: str, tmp_path: Path) -> None:
    """Start-up fails after leaving a non-daemon thread behind (as a half-started gateway can):
    the process must still exit, with a non-zero status."""
    from tests.conftest import write_toml

    cfg = base_config(fake_upstream, tmp_path, server={"port": free_port()})
    config = write_toml(cfg, tmp_path / "config.toml")
    script = textwrap.dedent(f"""
        import sys, threading
        from gateway.server import Gateway
        started = Gateway.start
        async def start(self):
            await started(self)
            threading.Thread(target=threading.Event().wait).start()
            raise OSError(30, "Read-only file system")
        Gateway.start = start
        from flywheel.cli import main
        sys.exit(main(["--config", {str(config)!r}, "serve"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, cwd=Path.cwd())
    assert proc.returncode != 0
    assert b"Read-only file system" in proc.stderr
