"""The OpenAI-compatible provider's stream: SSE events grouped by arrival, errors after good chunks."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.providers.base import UpstreamCall, UpstreamError
from gateway.providers.openai_compat import OpenAICompatProvider
from tests.providers.test_http1 import read_request, serving


def event(i: int) -> bytes:
    chunk = {"id": "up-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def sse_server(*writes: bytes) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for data in writes:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.05)  # separate network reads
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return handler


def stream_call() -> UpstreamCall:
    return UpstreamCall({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, 5.0)


async def test_events_that_arrive_together_come_as_one_group() -> None:
    handler = sse_server(event(0) + event(1) + event(2), event(3), b"data: [DONE]\n\n")
    async with serving(handler) as (url, _):
        provider = OpenAICompatProvider("up", base_url=url)
        groups = [[c["choices"][0]["delta"]["content"] for c in g] async for g in provider.chat_stream(stream_call())]
        await provider.aclose()
    assert groups == [["t0 ", "t1 ", "t2 "], ["t3 "]]


async def test_an_error_event_ends_the_stream_after_the_chunks_before_it() -> None:
    error = b'data: {"error": {"message": "overloaded"}}\n\n'
    handler = sse_server(event(0) + event(1) + error)
    got: list[str] = []
    async with serving(handler) as (url, _):
        provider = OpenAICompatProvider("up", base_url=url)
        with pytest.raises(UpstreamError, match="overloaded"):
            async for group in provider.chat_stream(stream_call()):
                got += [c["choices"][0]["delta"]["content"] for c in group]
        await provider.aclose()
    assert got == ["t0 ", "t1 "]


async def test_a_stream_without_done_is_an_error() -> None:
    async with serving(sse_server(event(0))) as (url, _):
        provider = OpenAICompatProvider("up", base_url=url)
        with pytest.raises(UpstreamError, match="without \\[DONE\\]"):
            async for _ in provider.chat_stream(stream_call()):
                pass
        await provider.aclose()
