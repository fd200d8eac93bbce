"""The streamed chat path after the policy's decision: opening an upstream stream up to its first
chunk (one attempt of the pipeline's retries and fallbacks), then relaying its chunks to the
client as server-sent events, within one total deadline, while assembling the call record's answer.

`gateway/serve/pipeline.py` (`Pipeline.chat_stream`) plans the call and fails over between
variants; everything after a variant sent its first chunk is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.providers.base import Body, Provider, UpstreamCall, UpstreamError
from gateway.serve.live_load import LiveLoad
from gateway.serve.stream_assembly import StreamAssembler
from gateway.serve.upstream_errors import to_gateway_error
from gateway.store.records import CallRecord

# Completes and logs the record once the stream ends, with the usage the stream reported.
Finish = Callable[[Body | None], None]


async def open_stream(provider: Provider, call: UpstreamCall,
                      timeout: float) -> tuple[AsyncIterator[list[Body]], list[Body]]:
    """The upstream stream and its first group of chunks; UpstreamError (closing the stream) when
    it ends or times out before one arrives."""
    it = provider.chat_stream(call).__aiter__()
    try:
        first = await asyncio.wait_for(it.__anext__(), timeout)
    except StopAsyncIteration:
        raise UpstreamError("upstream stream ended before its first chunk") from None
    except TimeoutError:
        await _aclose(it)
        raise UpstreamError(f"upstream sent no first chunk within {timeout:g}s", timeout=True) from None
    except BaseException:
        await _aclose(it)
        raise
    return it, first


async def relay(
    it: AsyncIterator[list[Body]], first: list[Body], record: CallRecord, call_id: str, started: float,
    wants_usage: bool, deadline: float, live: LiveLoad | None, provider: str, finish: Finish,
) -> AsyncIterator[bytes]:
    """The client's event stream: `first`, then the rest of `it` until `deadline` (time.monotonic()).

    Chunks carry `call_id`; usage chunks reach the client only when it asked (`wants_usage`). A
    broken upstream ends the stream with an error event; at the end, however it ends, the record
    gets the assembled answer and `finish` the usage. `live` counts `provider` busy meanwhile."""
    asm = StreamAssembler()
    group: list[Body] | None = first
    if live is not None:  # the upstream stays busy until the stream's last chunk
        live.enter(provider)
    try:
        while group is not None:
            events = []
            for chunk in group:
                asm.add(chunk)
                if record.ttft_ms is None and asm.saw_content:
                    record.ttft_ms = (time.perf_counter() - started) * 1000
                if not wants_usage and "usage" in chunk:
                    if not chunk.get("choices"):
                        continue
                    del chunk["usage"]
                chunk["id"] = call_id
                events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if events:  # what arrived together leaves together: one write, not one per token
                yield b"".join(events)
            group = await _next(it, deadline)
        yield b"data: [DONE]\n\n"
    except UpstreamError as exc:
        err = to_gateway_error(exc)
        record.status, record.error = err.status, f"stream broke after it started: {exc.message}"
        yield b"data: " + orjson.dumps(err.body()) + b"\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        record.status, record.error = 499, "client closed the stream before it ended"
        raise
    finally:
        if live is not None:
            live.leave(provider)
        await _aclose(it)
        record.response = asm.result(call_id)
        finish(asm.usage)


async def _next(it: AsyncIterator[list[Body]], deadline: float) -> list[Body] | None:
    """The next group of chunks, None at the end; UpstreamError(timeout) once `deadline` passes."""
    remaining = deadline - time.monotonic()
    try:
        async with asyncio.timeout(remaining if remaining > 0 else 0):
            return await it.__anext__()
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise UpstreamError("the stream passed its total deadline (retries.deadline_s)", timeout=True) from None


async def _aclose(it: AsyncIterator[Any]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        # closing a broken upstream stream must not mask the real error
        with contextlib.suppress(Exception):
            await close()
