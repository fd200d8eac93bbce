"""open_store URL handling, and the pure helpers under the backends (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store import codec, open_store, sqlite_path
from gateway.store.dialect import POSTGRES, SQLITE
from gateway.store.postgres import PostgresStore
from gateway.store.spill import decode, encode
from gateway.store.sqlite import SqliteStore
from tests.store.factories import SYSTEM_5K, make_call, make_feedback


def test_sqlite_urls() -> None:
    assert sqlite_path("sqlite:///data/flywheel.db") == "data/flywheel.db"
    assert sqlite_path("sqlite:////var/lib/flywheel.db") == "/var/lib/flywheel.db"
    assert sqlite_path("sqlite://:memory:") == ":memory:"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    with pytest.raises(ValueError, match="sqlite:///"):
        sqlite_path("sqlite://data.db")


def test_open_store_picks_the_backend_without_connecting() -> None:
    assert isinstance(open_store("sqlite:///data/x.db"), SqliteStore)
    pg = open_store("postgresql://flywheel@127.0.0.1:1/nowhere")  # nothing listens: no I/O yet
    assert isinstance(pg, PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)


def test_open_store_rejects_unknown_schemes_by_name() -> None:
    with pytest.raises(ValueError, match="'mysql'"):
        open_store("mysql://root@localhost/flywheel")


async def test_in_memory_sqlite(tmp_path: Path) -> None:
    store = open_store("sqlite://:memory:")
    await store.migrate()
    await store.insert_calls([make_call(1, system=SYSTEM_5K)])
    got = await store.get_call("chatcmpl-000001")
    assert got is not None and got.request["messages"][0]["content"] == SYSTEM_5K
    await store.close()


def test_placeholders_rewritten_for_postgres_only() -> None:
    sql = "SELECT a FROM t WHERE x = ? AND y IN (?, ?)"
    assert SQLITE.sql(sql) == sql
    assert POSTGRES.sql(sql) == "SELECT a FROM t WHERE x = $1 AND y IN ($2, $3)"


def test_externalize_leaves_the_callers_request_alone() -> None:
    request = {"messages": [{"role": "system", "content": SYSTEM_5K}, {"role": "user", "content": "hi"}]}
    blobs: dict[str, str] = {}
    stored = codec.externalize(request, blobs)
    assert request["messages"][0]["content"] == SYSTEM_5K
    assert stored["messages"][0]["content"] == {"$blob": codec.blob_hash(SYSTEM_5K)}
    assert stored["messages"][1] == {"role": "user", "content": "hi"}
    assert blobs == {codec.blob_hash(SYSTEM_5K): SYSTEM_5K}
    assert codec.externalize({"input": ["x" * 500]}, blobs) == {"input": ["x" * 500]}  # embeddings
    codec.restore(stored, blobs)
    assert stored == request


def test_spill_lines_round_trip() -> None:
    call = make_call(3, system=SYSTEM_5K)
    fb = make_feedback(call.id, signal="copied", source="inferred")
    assert decode(encode(call)) == call
    assert decode(encode(fb)) == fb
    with pytest.raises(ValueError):
        decode(b'{"kind": "call", "rec')
    with pytest.raises(ValueError):
        decode(b'{"kind": "nope", "record": {}}')
