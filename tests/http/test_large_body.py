"""A large request body is parsed off the event loop, in slices (gateway/http/requests.py): the
result and every error must be exactly what one `orjson.loads` of the whole body gives."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from gateway.http import requests as rq
from tests.conftest import base_config, received

DOCUMENTS = [
    b' {"a" : [ 1 , 2 ] , "b":{"c":[]}, "d": "x"} ',
    b"{}",
    b'{"a":[]}',
    b'{"a":[{"x":1}\n,\t{"y":[2, {"z": null}]}], "a2": [true, false, 1.5e3, -0.0]}',
    b'{"m":["\\u00e9 \xc3\xa9", "\\ud83d\\ude00", 18446744073709551616]}',
    b'{"a":1,"a":[2]}',  # a repeated key: the last one wins, as in orjson
    b"[1, 2]",  # valid, but not an object: orjson parses it whole
    b'"x"',
    # invalid: each must fail with orjson's own message for the whole body
    b'{"a":[1,]}', b'{"a":[NaN]}', b'{"a":"\\ud800"}', b'{"\\ud800":1}', b'{"a":[1e400]}', b'{"a":1,}',
    b'{"a":1} x', b'{"a":[1,2]', b'{"a":[1 2]}', b"\xff{}", b'{"a":"\x01"}', b"",
    b'{"a":[' + b"[" * 2000 + b"]" * 2000 + b"]}",  # deeper than orjson's recursion limit
]


def _outcome(loads: Any, doc: bytes) -> tuple[str, Any]:
    try:
        return "ok", loads(doc)
    except orjson.JSONDecodeError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_sliced_parse_matches_orjson(doc: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rq, "SLICE_ITEMS", 1)  # every element in its own slice: the slice joins are exercised
    assert _outcome(rq.loads_in_slices, doc) == _outcome(orjson.loads, doc)


def test_sliced_parse_of_a_large_chat_body_is_exact() -> None:
    body = {"model": "bot", "user": "u", "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": f"message {i} é ✓ " + "x" * (i % 50)} for i in range(3001)]}
    raw = orjson.dumps(body)
    assert rq.loads_in_slices(raw) == body == orjson.loads(raw)


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Any) -> Any:
    return make_gateway(base_config(fake_upstream, tmp_path))


def _big(n: int, **extra: Any) -> dict[str, Any]:
    body = {"model": "bot", "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
                                         for i in range(n)], **extra}
    assert len(orjson.dumps(body)) > rq.THREAD_BYTES
    return body


def test_a_large_chat_request_is_answered_and_forwarded_whole(gw: Any, fake_upstream: str) -> None:
    body = _big(20_001)
    r = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    sent = received(fake_upstream, "a")[-1]
    assert sent["messages"] == body["messages"]


def test_a_large_invalid_request_gets_the_same_400_as_a_small_one(gw: Any) -> None:
    body = _big(20_001)
    body["messages"][15_000]["role"] = "wizard"
    r = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[15000].role"
    raw = orjson.dumps(_big(20_001))
    r = httpx.post(gw.v1 + "/chat/completions", content=raw[:-1] + b",}",
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


async def test_release_later_empties_only_long_lists_a_slice_per_turn() -> None:
    long, other, short = list(range(rq.RELEASE_ITEMS * 3 + 5)), list(range(rq.RELEASE_ITEMS + 1)), [1, 2]
    assert rq.release_later(short, None, {"x": 1}) is None  # nothing to do: no task
    task = rq.release_later(long, short, other)
    assert task is not None
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while long or other:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await task()
    await counter
    assert long == [] and other == [] and short == [1, 2]
    assert turns >= 4  # other work ran between the slices
