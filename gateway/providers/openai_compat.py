"""The fast path: any OpenAI-compatible upstream (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, Groq…).

Bodies pass through untouched apart from `model`, so unknown request fields reach the upstream.
aiohttp rather than httpx: measured here at ~0.5 ms CPU per proxied request against 1.7–4.5 ms.
aiohttp sets TCP_NODELAY on its sockets, so streamed chunks are not held back by Nagle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from gateway.providers.base import Body, UpstreamCall, UpstreamError, UpstreamResponse

# Upstream headers a client may rely on (rate-limit budgets, request ids).
FORWARDED_HEADERS = ("retry-after", "x-request-id", "openai-processing-ms")
_RATELIMIT_PREFIX = "x-ratelimit-"


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_message(status: int, raw: bytes) -> tuple[str, Body | None]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()[:500]
        return (text or f"upstream answered HTTP {status}"), None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"]), body
    if isinstance(err, str):
        return err, body
    return f"upstream answered HTTP {status}", body if isinstance(body, dict) else None


def _chunk(payload: bytes) -> Body:
    chunk: Any = orjson.loads(payload)
    if isinstance(chunk, dict) and "error" in chunk:
        err = chunk["error"]
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise UpstreamError(f"upstream stream error: {msg}", status=502)
    if not isinstance(chunk, dict):
        raise UpstreamError("upstream stream carried a non-object event", status=502)
    return chunk


class OpenAICompatProvider:
    """An OpenAI-compatible HTTP upstream over a pooled keep-alive aiohttp session."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        max_connections: int = 256,
        azure_api_version: str | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._headers = {"content-type": "application/json", **(headers or {})}
        if api_key:
            if azure_api_version:
                self._headers["api-key"] = api_key
            else:
                self._headers["authorization"] = f"Bearer {api_key}"
        self._azure_version = azure_api_version
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _url(self, path: str, body: Body) -> str:
        if self._azure_version:
            return f"{self.base_url}/openai/deployments/{body['model']}/{path}?api-version={self._azure_version}"
        return f"{self.base_url}/{path}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, json_serialize=lambda o: orjson.dumps(o).decode()
            )
        return self._session

    @staticmethod
    def _forwarded(resp: aiohttp.ClientResponse) -> dict[str, str]:
        return {
            k.lower(): v
            for k, v in resp.headers.items()
            if k.lower() in FORWARDED_HEADERS or k.lower().startswith(_RATELIMIT_PREFIX)
        }

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        raw = await resp.read()
        message, body = _error_message(resp.status, raw)
        raise UpstreamError(
            message, status=resp.status, retry_after=parse_retry_after(resp.headers.get("retry-after")), body=body
        )

    async def _post(self, path: str, call: UpstreamCall) -> UpstreamResponse:
        timeout = aiohttp.ClientTimeout(total=call.timeout_s)
        try:
            async with self._client().post(
                self._url(path, call.body), data=orjson.dumps(call.body), timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    await self._raise_for(resp)
                raw = await resp.read()
                return UpstreamResponse(orjson.loads(raw), self._forwarded(resp))
        except UpstreamError:
            raise
        except TimeoutError as exc:
            raise UpstreamError(f"upstream timed out after {call.timeout_s:g}s", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream connection failed: {exc.__class__.__name__}: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("upstream answered with invalid JSON", status=502) from exc

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        return await self._post("chat/completions", call)

    async def embeddings(self, call: UpstreamCall) -> UpstreamResponse:
        return await self._post("embeddings", call)

    async def chat_stream(self, call: UpstreamCall) -> AsyncIterator[Body]:
        # No total timeout for a stream: the budget applies to the wait for each piece.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=call.timeout_s, sock_read=call.timeout_s)
        finished = False
        try:
            async with self._client().post(
                self._url("chat/completions", call.body), data=orjson.dumps(call.body), timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    await self._raise_for(resp)
                # Whole network reads split into lines: reading line by line costs two awaits per event.
                pending = b""
                async for data in resp.content.iter_any():
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            finished = True
                            break
                        yield _chunk(payload)
                    if finished:
                        break
        except UpstreamError:
            raise
        except TimeoutError as exc:
            raise UpstreamError(f"upstream stream stalled for {call.timeout_s:g}s", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream stream broke: {exc.__class__.__name__}: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("upstream stream carried invalid JSON", status=502) from exc
        if not finished:
            raise UpstreamError("upstream stream ended without [DONE]")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
