"""The native upstream client goes through forward proxies: CONNECT tunnels for https, absolute-form
requests for http, HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment or a configured proxy."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.providers.http1 import Pool, TransportError, proxy_for
from gateway.providers.openai_compat import OpenAICompatProvider

BODY = b'{"ok": true}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


@dataclass
class Proxy:
    """A loopback forward proxy that records the first line of every request it gets."""

    port: int = 0
    lines: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request it reads (head plus content-length body) with RESPONSE."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    state = Proxy()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        first, *rest = head.split("\r\n")
        state.lines.append(first)
        state.headers.extend(h.lower() for h in rest if h)
        method, target, _ = first.split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        else:  # absolute form: answer as the origin would, the body being read first
            length = next((int(h.split(":", 1)[1]) for h in rest if h.lower().startswith("content-length:")), 0)
            await reader.readexactly(length)
            writer.write(RESPONSE)
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


async def test_https_upstream_is_reached_through_a_connect_tunnel(proxy: Proxy, cert: tuple[Path, Path]) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*cert)
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0, ssl=server_ctx)
    port = upstream.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert[0]))  # verified: the tunnel carries real TLS
    pool = Pool(f"https://localhost:{port}/v1", headers={}, ssl=client_ctx,
                proxy=f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    try:
        for _ in range(2):  # the second request reuses the tunnelled connection
            async with pool.posting("chat/completions", b"{}", timeout=10) as resp:
                assert resp.status == 200 and await resp.read() == BODY
    finally:
        await pool.aclose()
        upstream.close()
    assert proxy.lines == [f"CONNECT localhost:{port} HTTP/1.1"]
    assert "proxy-authorization: basic dxnlcjpwqhnz" in proxy.headers  # user:p@ss


async def test_http_upstream_goes_to_the_proxy_in_absolute_form(proxy: Proxy) -> None:
    pool = Pool("http://upstream.invalid:8000/v1", headers={}, proxy=f"http://127.0.0.1:{proxy.port}")
    try:
        async with pool.posting("chat/completions", b"{}", timeout=10) as resp:
            assert await resp.read() == BODY
    finally:
        await pool.aclose()
    assert proxy.lines == ["POST http://upstream.invalid:8000/v1/chat/completions HTTP/1.1"]


async def test_a_refused_connect_is_a_transport_error(cert: tuple[Path, Path]) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    pool = Pool("https://localhost:9/v1", headers={}, proxy=f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    with pytest.raises(TransportError, match="407"):
        await pool.post("chat/completions", b"{}", timeout=5)
    server.close()


def test_environment_proxies_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal")
    assert proxy_for("https://api.openai.com/v1") == "http://corp:3128"
    assert proxy_for("http://api.openai.com/v1") is None  # HTTP_PROXY is not set
    assert proxy_for("https://vllm.internal/v1") is None
    assert proxy_for("https://api.openai.com/v1", "http://other:8080") == "http://other:8080"
    assert proxy_for("https://api.openai.com/v1", "") is None  # configured "": no proxy, whatever the env says


async def test_the_openai_provider_uses_the_environment_proxy(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    provider = OpenAICompatProvider("p", base_url="http://upstream.invalid/v1")
    try:
        pool = provider._client()
        async with pool.posting("chat/completions", b"{}", timeout=10) as resp:
            assert await resp.read() == BODY
    finally:
        await provider.aclose()
    assert proxy.lines == ["POST http://upstream.invalid/v1/chat/completions HTTP/1.1"]
