"""The 200-prompt PII fixture through the gateway with scrubbing on (the default): no planted
value survives in any text column of any table of the SQLite database, in the database files'
raw bytes, or in the writer's spill files."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.store import sqlite_path
from tests.capture.conftest import poll_store
from tests.conftest import RunningGateway, base_config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pii_prompts.jsonl"
N_FEEDBACK = 40  # calls that also get a correction and a comment quoting the prompt


def _prompts() -> list[dict[str, Any]]:
    rows = [orjson.loads(line) for line in FIXTURE.read_bytes().splitlines() if line.strip()]
    assert len(rows) == 200
    return rows


def planted(rows: list[dict[str, Any]]) -> set[str]:
    values = {p["value"] for r in rows for p in r["pii"]}
    assert len(values) > 200
    return values


async def _send_all(v1: str, rows: list[dict[str, Any]], tag: str) -> list[str]:
    """Every prompt through the gateway (16 at a time), then feedback quoting it on the first few."""
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int, row: dict[str, Any]) -> str:
            async with sem:
                r = await client.post(v1 + "/chat/completions", json={
                    "model": "bot", "user": f"{tag}-{i}",
                    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": row["text"]}]})
                assert r.status_code == 200, r.text
                call_id: str = r.headers["x-flywheel-call-id"]
                return call_id

        ids = await asyncio.gather(*(one(i, r) for i, r in enumerate(rows)))
        for call_id, row in list(zip(ids, rows, strict=True))[:N_FEEDBACK]:
            r = await client.post(v1 + "/feedback", json={
                "call_id": call_id, "rating": -1, "correction": f"Better: {row['text']}",
                "comment": f"it ignored {row['text']}"})
            assert r.status_code in (201, 202), r.text  # 202: accepted while the database is down
    return list(ids)


def text_values(db: Path) -> Iterator[tuple[str, str, str]]:
    """(table, column, text) for every non-empty text or blob value of every table."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"calls", "attempts", "feedback", "blobs"} <= set(tables)
        for table in tables:
            columns = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
            for col in columns:
                for (value,) in con.execute(f'SELECT "{col}" FROM "{table}"'):
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    if isinstance(value, str) and value:
                        yield table, col, value
    finally:
        con.close()


def leaks(values: set[str], texts: Iterator[tuple[str, str, str]]) -> list[str]:
    out: list[str] = []
    for table, col, text in texts:
        out.extend(f"{table}.{col}: {v!r}" for v in values if v in text)
    return out


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> RunningGateway:
    gateway: RunningGateway = make_gateway(base_config(fake_upstream, tmp_path))
    assert gateway.gateway.settings.privacy.store_raw is False  # scrubbing is the default
    return gateway


def test_no_planted_pii_reaches_the_database(gw: RunningGateway) -> None:
    rows = _prompts()
    values = planted(rows)
    ids = asyncio.run(_send_all(gw.v1, rows, "db"))
    url = gw.gateway.settings.store.url
    assert poll_store(url, lambda s: s.count_calls(), lambda n: n == 200, timeout=60) == 200
    assert poll_store(url, lambda s: s.count_feedback(), lambda n: n >= N_FEEDBACK, timeout=30) >= N_FEEDBACK
    stored = poll_store(url, lambda s: s.get_call(ids[0]), lambda c: c is not None)
    assert stored is not None and "You said" in orjson.dumps(stored.response).decode()  # text is kept, scrubbed
    db = Path(sqlite_path(url))
    texts = list(text_values(db))
    assert sum(len(t) for _, _, t in texts) > 20_000  # the scan really saw the stored text
    found = leaks(values, iter(texts))
    assert not found, f"{len(found)} planted PII values stored raw, e.g. {found[:10]}"
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))  # the file, its WAL and SHM
    raw_leaks = [v for v in values if v.encode() in raw]
    assert not raw_leaks, f"planted PII in the database files' bytes: {raw_leaks[:10]}"


def test_no_planted_pii_reaches_the_spill_file(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    rows = _prompts()
    values = planted(rows)
    store = gw.gateway.store
    writer = gw.gateway.writer
    assert store is not None and writer is not None

    async def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("database unreachable")

    # A database outage: every insert (and re-ingest) fails, so rows go to the spill file.
    monkeypatch.setattr(store, "insert_calls", down)
    monkeypatch.setattr(store, "insert_call_rows", down)
    monkeypatch.setattr(store, "insert_feedback", down)
    asyncio.run(_send_all(gw.v1, rows, "spill"))
    deadline = time.monotonic() + 60
    while writer.stats.spilled < 200 + N_FEEDBACK and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.stats.spilled >= 200 + N_FEEDBACK
    spill = Path(gw.gateway.settings.store.spill_path)
    files = [p for p in spill.parent.glob(spill.name + "*") if p.is_file()]
    data = b"".join(p.read_bytes() for p in files)
    assert data.count(b'"kind":"call"') >= 200  # the spill really holds the calls
    text = data.decode()
    found = [v for v in values if v in text]
    assert not found, f"{len(found)} planted PII values in the spill file, e.g. {found[:10]}"
