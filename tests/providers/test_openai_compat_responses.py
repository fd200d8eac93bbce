"""The OpenAI-compatible provider's native Responses API: a stream ends at its terminal event, an
`error` event or a missing terminal event is an UpstreamError after the events before it, and the
streamed answer's headers are handed back through the call."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.providers.base import UpstreamCall, UpstreamError, speaks_responses
from gateway.providers.openai_compat import OpenAICompatProvider
from tests.providers.test_http1 import serving
from tests.providers.test_openai_compat_stream import event, sse_server


def rsp(kind: str, seq: int, **fields: Any) -> bytes:
    data = {"type": kind, "sequence_number": seq, **fields}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def call() -> UpstreamCall:
    return UpstreamCall({"model": "m", "stream": True, "input": "hi"}, 5.0)


async def collect(url: str, c: UpstreamCall) -> list[str]:
    provider = OpenAICompatProvider("up", base_url=url, responses="native")
    got: list[str] = []
    try:
        async for group in provider.responses_stream(c):
            got += [e["type"] for e in group]
    finally:
        await provider.aclose()
        got.append("closed")
    return got


async def test_the_stream_ends_at_its_terminal_event() -> None:
    handler = sse_server(rsp("response.created", 0, response={}) + rsp("response.output_text.delta", 1, delta="a"),
                         rsp("response.completed", 2, response={}), b"data: ignored-after-the-end\n\n")
    async with serving(handler) as (url, _):
        assert await collect(url, call()) == ["response.created", "response.output_text.delta",
                                              "response.completed", "closed"]


async def test_an_error_event_raises_with_its_code_after_the_events_before_it() -> None:
    handler = sse_server(rsp("response.created", 0, response={}),
                         rsp("error", 1, code="rate_limit_exceeded", message="slow down", param=None))
    async with serving(handler) as (url, _):
        provider = OpenAICompatProvider("up", base_url=url, responses="native")
        got: list[str] = []
        with pytest.raises(UpstreamError, match="slow down") as exc:
            async for group in provider.responses_stream(call()):
                got += [e["type"] for e in group]
        await provider.aclose()
    assert got == ["response.created"]
    assert exc.value.body == {"error": {"message": "slow down", "type": None, "code": "rate_limit_exceeded",
                                        "param": None}}


async def test_a_stream_without_a_terminal_event_is_an_error() -> None:
    async with serving(sse_server(rsp("response.created", 0, response={}))) as (url, _):
        with pytest.raises(UpstreamError, match="without a final response event"):
            await collect(url, call())


async def test_a_chat_stream_hands_back_the_upstream_headers() -> None:
    async def handler(reader: Any, writer: Any) -> None:
        from tests.providers.test_http1 import read_request

        await read_request(reader)
        body = event(0) + b"data: [DONE]\n\n"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: req_9\r\n"
                     b"x-ratelimit-remaining-tokens: 7\r\nset-cookie: no\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()

    c = UpstreamCall({"model": "m", "stream": True, "messages": []}, 5.0)
    async with serving(handler) as (url, _):
        provider = OpenAICompatProvider("up", base_url=url)
        assert [g async for g in provider.chat_stream(c)]
        await provider.aclose()
    assert c.received_headers == {"x-request-id": "req_9", "x-ratelimit-remaining-tokens": "7"}


def test_only_a_native_provider_speaks_responses() -> None:
    assert speaks_responses(OpenAICompatProvider("up", base_url="http://x", responses="native"))
    assert not speaks_responses(OpenAICompatProvider("up", base_url="http://x"))
