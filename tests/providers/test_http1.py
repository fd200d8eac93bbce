"""The upstream HTTP/1.1 client against scripted raw-socket servers: framing, keep-alive, the
keep-alive race, compression, TLS, timeouts and broken responses."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.providers.http1 import Pool, TransportError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request, framed by its content-length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> tuple[bytes, bytes]:
    """Read one request, answer it with `body`; returns the request's (head, body)."""
    request = await read_request(reader)
    writer.write(reply(body))
    await writer.drain()
    return request


def reply(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def serving(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on a free port; yields its base URL and the list of connections it accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test ended with the connection open
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ssl_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{port}/v1", accepted
    finally:
        server.close()


async def keep_alive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(reader)
        path = head.split(b" ")[1]
        writer.write(reply(path + b" " + body, "content-type: application/json"))
        await writer.drain()


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async with serving(keep_alive_echo) as (url, accepted):
        pool = Pool(url, headers={"authorization": "Bearer k"})
        for i in range(3):
            async with pool.posting("chat/completions", b"x%d" % i, timeout=5) as resp:
                assert resp.status == 200
                assert await resp.read() == b"/v1/chat/completions x%d" % i
        await pool.aclose()
    assert len(accepted) == 1


async def test_request_carries_host_and_configured_headers() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await answer(reader, writer, b"{}"))[0])

    async with serving(handler) as (url, _):
        pool = Pool(url, headers={"authorization": "Bearer k", "content-type": "application/json"})
        async with pool.posting("embeddings", b"{}", timeout=5) as resp:
            await resp.read()
    head = seen[0].decode()
    assert head.startswith("POST /v1/embeddings HTTP/1.1\r\n")
    assert f"host: {url.split('//')[1].split('/')[0]}" in head
    assert "authorization: Bearer k" in head and "content-length: 2" in head


def test_header_values_with_line_breaks_are_refused() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        Pool("http://127.0.0.1:1/v1", headers={"x-evil": "a\r\nhost: elsewhere"})


async def test_chunked_stream_arrives_piece_by_piece_and_connection_is_reused() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            await writer.drain()
            release.clear()

    async with serving(handler) as (url, accepted):
        pool = Pool(url, headers={})
        for _ in range(2):
            async with pool.posting("chat/completions", b"{}", timeout=5) as resp:
                pieces = resp.iter_chunks(read_timeout=5)
                assert await anext(pieces) == b"first"  # before the rest was even sent
                release.set()
                assert [p async for p in pieces] == [b"second"]
                assert resp.complete
    assert len(accepted) == 1


async def test_gzip_body_is_inflated() -> None:
    payload = b'{"answer": "' + b"forty-two " * 200 + b'"}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply(gzip.compress(payload), "content-encoding: gzip"))
        await writer.drain()

    async with serving(handler) as (url, _), Pool(url, headers={}).posting("x", b"", timeout=5) as resp:
        assert await resp.read() == payload


async def test_body_delimited_by_connection_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with serving(handler) as (url, accepted):
        pool = Pool(url, headers={})
        for _ in range(2):
            async with pool.posting("x", b"", timeout=5) as resp:
                assert await resp.read() == b"all of it"
    assert len(accepted) == 2  # `connection: close` is honoured: no reuse


async def test_keep_alive_race_is_retried_on_a_new_connection() -> None:
    """The upstream closes an idle keep-alive connection just as the next request goes out."""
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append((await answer(reader, writer, b"ok"))[1])
        # no `connection: close`: the client pools it; then it is closed under the client's feet
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with serving(handler) as (url, accepted):
        pool = Pool(url, headers={})
        async with pool.posting("x", b"one", timeout=5) as resp:
            assert await resp.read() == b"ok"
        await asyncio.sleep(0.2)
        async with pool.posting("x", b"two", timeout=5) as resp:
            assert await resp.read() == b"ok"
    assert requests == [b"one", b"two"] and len(accepted) == 2


async def test_reset_mid_body_is_a_transport_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    async with serving(handler) as (url, _):
        with pytest.raises(TransportError, match="mid-response"):
            async with Pool(url, headers={}).posting("x", b"", timeout=5) as resp:
                await resp.read()


async def test_garbage_instead_of_http_is_a_transport_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with serving(handler) as (url, _):
        with pytest.raises(TransportError, match="malformed HTTP response"):
            await Pool(url, headers={}).post("x", b"", timeout=5)


async def test_refused_connection_is_a_transport_error() -> None:
    async with serving(keep_alive_echo) as (url, _):
        pass  # closed again: the port now refuses
    with pytest.raises(TransportError, match="cannot connect"):
        await Pool(url, headers={}).post("x", b"", timeout=5)


async def test_stalled_stream_times_out_and_its_connection_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()

    async with serving(handler) as (url, accepted):
        pool = Pool(url, headers={})
        for _ in range(2):
            with pytest.raises(TimeoutError):
                async with pool.posting("x", b"", timeout=5) as resp:
                    assert [p async for p in resp.iter_chunks(read_timeout=0.1)] == [b"abc"]
    assert len(accepted) == 2


async def test_connection_limit_queues_requests() -> None:
    in_flight: list[int] = []
    peak: list[int] = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            in_flight.append(1)
            peak[0] = max(peak[0], len(in_flight))
            await asyncio.sleep(0.02)
            in_flight.pop()
            writer.write(reply(b"ok"))
            await writer.drain()

    async with serving(handler) as (url, accepted):
        pool = Pool(url, headers={}, limit=2)

        async def one() -> bytes:
            async with pool.posting("x", b"", timeout=5) as resp:
                return await resp.read()

        assert await asyncio.gather(*[one() for _ in range(6)]) == [b"ok"] * 6
    assert peak[0] == 2 and len(accepted) == 2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_https_verifies_the_upstream_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with serving(keep_alive_echo, server_ctx) as (url, _):
        trusting = ssl.create_default_context(cafile=str(cert))
        async with Pool(url, headers={}, ssl=trusting).posting("chat/completions", b"hi", timeout=5) as resp:
            assert await resp.read() == b"/v1/chat/completions hi"
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await Pool(url, headers={}).post("x", b"", timeout=5)  # default context: self-signed refused


async def test_upstream_sockets_have_nagle_off() -> None:
    """A stream's small SSE events must not wait for ACKs (DESIGN: ~40 ms stalls with Nagle on)."""
    async with serving(keep_alive_echo) as (url, _):
        pool = Pool(url, headers={})
        async with pool.posting("x", b"", timeout=5) as resp:
            sock = resp._conn.transport.get_extra_info("socket") if resp._conn.transport else None
            assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            await resp.read()
