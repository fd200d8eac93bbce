"""What every HTTP handler needs from a request: the gateway, the caller, the JSON body.

A body over `THREAD_BYTES` is parsed (and checked) on a worker thread, in slices: one
`orjson.loads` of a 7.8 MB, 60,000-message chat request holds the interpreter lock for ~45-60 ms,
and everything else the event loop serves waits that long. `loads_in_slices` lets orjson parse
every value of the body, a few hundred messages per call, so the loop waits at most one slice.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
from collections.abc import Callable
from json.scanner import make_scanner
from typing import TYPE_CHECKING, Any

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request

from gateway.errors import InvalidRequest
from gateway.http.auth import ANONYMOUS, Principal

if TYPE_CHECKING:
    from gateway.server import Gateway

Body = dict[str, Any]
Check = Callable[[Body], None]

THREAD_BYTES = 256_000  # bodies above this are parsed on a worker thread (orjson: ~1.5 ms per 256 KB)
RELEASE_ITEMS = 2_000  # a list longer than this is freed in slices of this many items (release_later)
SLICE_ITEMS = 256  # array elements per orjson call (~0.2-0.5 ms for chat messages)
_DECODE_CHUNK = 1 << 20  # bytes decoded per call (UTF-8 decoding of 8 MB at once: ~15 ms)


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def principal_of(request: Request) -> Principal:
    p: Principal = request.scope.get("state", {}).get("principal", ANONYMOUS)
    return p


async def read_json(request: Request, check: Check | None = None) -> Body:
    """The request body as a JSON object, or a 400 that says what is wrong with it; `check` (a
    validator raising InvalidRequest) runs on it too, on the same worker thread for a large body."""
    raw = await request.body()
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    if len(raw) > THREAD_BYTES:
        return await asyncio.to_thread(_parse, raw, loads_in_slices, check)
    return _parse(raw, orjson.loads, check)


def _parse(raw: bytes, loads: Callable[[bytes], Any], check: Check | None) -> Body:
    try:
        body = loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if check is not None:
        check(body)
    return body


def release_later(*lists: object) -> BackgroundTask | None:
    """A response's background task that empties the long lists among `lists` (a request's own
    messages, once answered and logged), `RELEASE_ITEMS` per event-loop turn: when the last
    reference to 60,000 parsed messages goes, CPython frees all 180,000 objects in one go, holding
    the loop ~10 ms (~30 ms on a busy machine). None when no list is long."""
    long = [x for x in lists if isinstance(x, list) and len(x) > RELEASE_ITEMS]
    return BackgroundTask(_release, long) if long else None


async def _release(lists: list[list[Any]]) -> None:
    for items in lists:
        while items:
            del items[-RELEASE_ITEMS:]
            await asyncio.sleep(0)


# -- a large body, in slices ------------------------------------------------------------------------

_DECODER: Any = json.JSONDecoder()  # typeshed types make_scanner's argument as a duck-typed context
_SCAN = make_scanner(_DECODER)  # the standard library's C scanner: only finds where values end
_WS = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    """The index of the first non-whitespace character at or after `i`."""
    m = _WS.match(text, i)
    return i if m is None else m.end()


class _NotSliceable(Exception):
    """The body is not a plain JSON object the slicer can walk: orjson parses it whole instead."""


def loads_in_slices(raw: bytes) -> Any:
    """`orjson.loads(raw)`, the same result and the same errors, for a worker thread: a JSON object
    is walked key by key, and the elements of its array values parsed `SLICE_ITEMS` at a time, so
    no single call holds the interpreter lock for long. Anything the walk does not expect
    (another top-level type, a syntax error) goes to one `orjson.loads` of the whole body, which
    then answers exactly as it always did."""
    try:
        text = _decode(raw)
        return _object(text)
    except (_NotSliceable, StopIteration, ValueError, RecursionError, UnicodeDecodeError):
        # orjson.JSONDecodeError is a ValueError: orjson's own message comes from the whole parse
        return orjson.loads(raw)


def _decode(raw: bytes) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    view = memoryview(raw)
    parts = [decoder.decode(view[i:i + _DECODE_CHUNK]) for i in range(0, len(raw), _DECODE_CHUNK)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def _end_of_value(text: str, i: int) -> int:
    """Where the JSON value starting at `i` ends (StopIteration, ValueError when there is none)."""
    end: int = _SCAN(text, i)[1]
    return end


def _object(text: str) -> Body:
    i = _skip(text, 0)
    if text[i:i + 1] != "{":
        raise _NotSliceable
    out: Body = {}
    i = _skip(text, i + 1)
    if text[i:i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i:i + 1] != '"':
                raise _NotSliceable
            end = _end_of_value(text, i)
            key = orjson.loads(text[i:end])
            i = _skip(text, end)
            if text[i:i + 1] != ":":
                raise _NotSliceable
            i = _skip(text, i + 1)
            if text[i:i + 1] == "[":
                out[key], i = _array(text, i)
            else:
                end = _end_of_value(text, i)
                out[key] = orjson.loads(text[i:end])
                i = end
            i = _skip(text, i)
            sep = text[i:i + 1]
            i = _skip(text, i + 1)
            if sep == "}":
                break
            if sep != ",":
                raise _NotSliceable
    if _skip(text, i) != len(text):
        raise _NotSliceable
    return out


def _array(text: str, i: int) -> tuple[list[Any], int]:
    """The array starting at `i` and the index after it: each run of `SLICE_ITEMS` elements is
    parsed by one orjson call (the scanner only found where they end)."""
    items: list[Any] = []
    i = _skip(text, i + 1)
    if text[i:i + 1] == "]":
        return items, i + 1
    start, count = i, 0
    while True:
        end = _end_of_value(text, i)
        count += 1
        i = _skip(text, end)
        sep = text[i:i + 1]
        if sep == "]" or count == SLICE_ITEMS:
            items.extend(orjson.loads("[" + text[start:end] + "]"))
            count = 0
            if sep == "]":
                return items, i + 1
            start = _skip(text, i + 1)
        if sep != ",":
            raise _NotSliceable
        i = _skip(text, i + 1)
