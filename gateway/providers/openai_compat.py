"""The fast path: any OpenAI-compatible upstream (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp, Groq…).

Bodies pass through untouched apart from `model`, so unknown request fields reach the upstream.
With `responses = "native"` the provider also takes POST /v1/responses as it is (non-streamed and
streamed events); otherwise the gateway translates Responses requests to chat before they get here.
The HTTP client is gateway/providers/http1.py: httpx cost 1.7–4.5 ms CPU per proxied request here,
aiohttp ~0.5 ms, and http1 about a fifth of the gateway's CPU per request less than aiohttp.
asyncio sets TCP_NODELAY on TCP sockets, so streamed chunks are not held back by Nagle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from gateway.providers.base import TERMINAL_EVENTS, Body, UpstreamCall, UpstreamError, UpstreamResponse, too_large
from gateway.providers.http1 import Pool, Response, ResponseTooLarge, TransportError, proxy_for

_ERROR_BODY_LIMIT = 1 << 20  # an error body is only read for its message
# Upstream headers a client may rely on (rate-limit budgets, request ids).
FORWARDED_HEADERS = ("retry-after", "retry-after-ms", "x-request-id", "openai-processing-ms")
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


Take = Callable[[bytes], tuple[Body | None, bool]]  # an SSE data payload -> (item to relay, stream finished)


def _chat_event(payload: bytes) -> tuple[Body | None, bool]:
    if payload == b"[DONE]":
        return None, True
    return _chunk(payload), False


def _responses_event(payload: bytes) -> tuple[Body | None, bool]:
    """A Responses stream event; an `error` event raises (its message and code kept)."""
    event: Any = orjson.loads(payload)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise UpstreamError("upstream stream carried an event without a type", status=502)
    if event["type"] == "error":
        nested = event.get("error")
        err: Body = nested if isinstance(nested, dict) else {**event, "type": None}  # `type` names the event
        raise UpstreamError(f"upstream stream error: {err.get('message', '')}", status=502,
                            body={"error": {k: err.get(k) for k in ("message", "type", "code", "param")}})
    return event, event["type"] in TERMINAL_EVENTS


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
    """An OpenAI-compatible HTTP upstream over a pool of keep-alive connections."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        max_connections: int = 256,
        azure_api_version: str | None = None,
        timeout_s: float | None = None,
        proxy: str | None = None,
        responses: str = "translate",
    ) -> None:
        self.name = name
        self._responses = responses  # "native": /v1/responses requests are sent as they are
        self._proxy = proxy_for(base_url, proxy)  # None: HTTPS_PROXY/HTTP_PROXY/NO_PROXY decide
        self.timeout_s = timeout_s
        self.base_url = base_url.rstrip("/")
        self._headers = {"content-type": "application/json", **(headers or {})}
        if api_key:
            if azure_api_version:
                self._headers["api-key"] = api_key
            else:
                self._headers["authorization"] = f"Bearer {api_key}"
        self._azure_version = azure_api_version
        self._max_connections = max_connections
        self._pool: Pool | None = None

    def _path(self, path: str, body: Body) -> str:
        if self._azure_version and path == "responses":  # Azure's Responses API names the model in the body
            return f"openai/responses?api-version={self._azure_version}"
        if self._azure_version:
            return f"openai/deployments/{body['model']}/{path}?api-version={self._azure_version}"
        return path

    def _client(self) -> Pool:
        if self._pool is None:
            self._pool = Pool(self.base_url, headers=self._headers, limit=self._max_connections, keepalive_s=30,
                              proxy=self._proxy)
        return self._pool

    @staticmethod
    def _forwarded(resp: Response) -> dict[str, str]:
        return {k: v for k, v in resp.headers.items() if k in FORWARDED_HEADERS or k.startswith(_RATELIMIT_PREFIX)}

    async def _raise_for(self, resp: Response) -> None:
        try:
            raw = await resp.read(_ERROR_BODY_LIMIT)
        except ResponseTooLarge:
            raw = b""
        message, body = _error_message(resp.status, raw)
        raise UpstreamError(
            message, status=resp.status, retry_after=parse_retry_after(resp.headers.get("retry-after")), body=body,
            headers=self._forwarded(resp),
        )

    async def _post(self, path: str, call: UpstreamCall) -> UpstreamResponse:
        try:
            async with asyncio.timeout(call.timeout_s):
                async with self._client().posting(self._path(path, call.body), orjson.dumps(call.body),
                                                  timeout=None) as resp:
                    if resp.status >= 400:
                        await self._raise_for(resp)
                    raw = await resp.read(call.max_response_bytes)
                    return UpstreamResponse(orjson.loads(raw), self._forwarded(resp))
        except UpstreamError:
            raise
        except ResponseTooLarge as exc:
            raise too_large(exc.limit) from None
        except TimeoutError as exc:
            raise UpstreamError(f"upstream timed out after {call.timeout_s:g}s", timeout=True) from exc
        except TransportError as exc:
            raise UpstreamError(f"upstream connection failed: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("upstream answered with invalid JSON", status=502) from exc

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        return await self._post("chat/completions", call)

    async def embeddings(self, call: UpstreamCall) -> UpstreamResponse:
        return await self._post("embeddings", call)

    async def chat_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        async for group in self._stream("chat/completions", call, _chat_event, "[DONE]"):
            yield group

    @property
    def speaks_responses(self) -> bool:
        """`[providers.X] responses = "native"`: POST /v1/responses is sent to the upstream as it is."""
        return self._responses == "native"

    async def responses(self, call: UpstreamCall) -> UpstreamResponse:
        return await self._post("responses", call)

    async def responses_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        async for group in self._stream("responses", call, _responses_event, "a final response event"):
            yield group

    async def _stream(self, path: str, call: UpstreamCall, take: Take, end: str) -> AsyncIterator[list[Body]]:
        """The `data:` payloads of a streamed POST, parsed by `take`, grouped by network read; an
        UpstreamError naming `end` when the body ends before `take` saw the stream's end."""
        # No total timeout for a stream: the budget applies to the wait for each piece.
        finished = False
        try:
            async with self._client().posting(self._path(path, call.body), orjson.dumps(call.body),
                                              timeout=call.timeout_s) as resp:
                if resp.status >= 400:
                    await self._raise_for(resp)
                call.received_headers.update(self._forwarded(resp))
                # Whole network reads split into lines: reading line by line costs two awaits per event.
                pending = b""
                async for data in resp.iter_chunks(read_timeout=call.timeout_s, limit=call.max_response_bytes):
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    group: list[Body] = []
                    broken: Exception | None = None
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        try:
                            item, finished = take(line[5:].strip())
                        except (UpstreamError, orjson.JSONDecodeError) as exc:
                            broken = exc  # the chunks before it still reach the client
                            break
                        if item is not None:
                            group.append(item)
                        if finished:
                            break
                    if group:
                        yield group
                    if broken is not None:
                        raise broken
                    if finished:
                        break
                if finished and not resp.complete:
                    # The body's terminating chunk follows the last event: read it, so the connection is reused.
                    with contextlib.suppress(TimeoutError, TransportError):
                        async with asyncio.timeout(1.0):
                            await resp.read()
        except UpstreamError:
            raise
        except ResponseTooLarge as exc:
            raise too_large(exc.limit) from None
        except TimeoutError as exc:
            raise UpstreamError(f"upstream stream stalled for {call.timeout_s:g}s", timeout=True) from exc
        except TransportError as exc:
            raise UpstreamError(f"upstream stream broke: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("upstream stream carried invalid JSON", status=502) from exc
        if not finished:
            raise UpstreamError(f"upstream stream ended without {end}")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
