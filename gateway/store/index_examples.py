"""An index version's examples stored once per route, the version keeping their addresses.

The learners store an index version per batch of corrections (on a busy route, one every few
seconds), and each version holds every example of the route. Stored inline, a route's versions
together hold its examples once per version: the store grows with the square of the examples
(5,000 examples of ~250 bytes are 1.2 MB a version). So `pack` moves an index body's examples to
`index_examples` rows, addressed by a hash of their content, and leaves their addresses in order
under `example_refs`; an example kept by the next version is not written again. `unpack` puts them
back, so everything above the store sees the same body it saved.

Forgetting a user deletes their rows by example id (`forget_examples`) once the versions holding
them are filtered (gateway/store/forget.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from gateway.store.dialect import Conn, placeholders
from gateway.store.records import JSON
from retrieval.examples import without_vectors

EXAMPLES = "examples"
REFS = "example_refs"
COLUMNS = ("route", "hash", "example_id", "body")
_CHUNK = 500  # hashes per IN (...) query


def _address(text: str) -> str:
    # 80 bits: a route's versions repeat every address, so it is kept short; two of a million
    # examples share one with a chance of ~4e-13
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def pack(route: str, kind: str, body: JSON) -> tuple[JSON, list[tuple[str, str, str, str]]]:
    """(`body` with its examples replaced by their addresses, the `index_examples` rows to
    insert); an index body without an example list, or another kind's, is returned as it is."""
    if kind != "index" or not isinstance(body, dict) or not isinstance(body.get(EXAMPLES), list):
        return body, []
    rows: dict[str, tuple[str, str, str, str]] = {}
    refs: list[str] = []
    for example in body[EXAMPLES]:
        text = orjson.dumps(example, option=orjson.OPT_SORT_KEYS, default=str).decode()
        address = _address(text)
        example_id = str(example.get("id", "")) if isinstance(example, dict) else ""
        rows[address] = (route, address, example_id, text)
        refs.append(address)
    packed = {k: v for k, v in body.items() if k != EXAMPLES}
    packed[REFS] = refs
    return packed, list(rows.values())


def packed(body: JSON) -> bool:
    """Whether a stored body keeps its examples' addresses (possibly none) instead of the examples."""
    return isinstance(body, dict) and REFS in body


def refs_of(body: JSON) -> list[str]:
    """The example addresses a stored body refers to (none for an inline or non-index body)."""
    refs = body.get(REFS) if isinstance(body, dict) else None
    return [str(r) for r in refs] if isinstance(refs, list) else []


def unpack(body: JSON, examples: Mapping[str, Any]) -> JSON:
    """Inverse of `pack`, given the examples by address. An address with no row (its example was
    forgotten while this version was being written) is left out, and so are the vectors, which
    would no longer line up with the examples: the index is rebuilt from them if served."""
    if not packed(body):
        return body
    refs = refs_of(body)
    out = {k: v for k, v in body.items() if k != REFS}
    out[EXAMPLES] = [examples[r] for r in refs if r in examples]
    if len(out[EXAMPLES]) < len(refs):
        out = without_vectors(out)
        out["count"] = len(out[EXAMPLES])
    return out


async def save_rows(conn: Conn, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Insert the examples not stored yet (an address names one content: a known one is skipped)."""
    if rows:
        await conn.insert_many("index_examples", COLUMNS, rows, "ON CONFLICT (route, hash) DO NOTHING")


async def load(conn: Conn, route: str, refs: Iterable[str]) -> dict[str, Any]:
    """The examples of `route` at these addresses, by address."""
    wanted = sorted(set(refs))
    out: dict[str, Any] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        rows = await conn.fetch(f"SELECT hash, body FROM index_examples WHERE route = ? AND hash IN "
                                f"({placeholders(len(chunk))})", route, *chunk)
        out.update((str(r[0]), orjson.loads(r[1])) for r in rows)
    return out


async def delete(conn: Conn, route: str, example_ids: Sequence[str]) -> int:
    """Delete the rows of these example ids (every content they had); how many."""
    deleted = 0
    for start in range(0, len(example_ids), _CHUNK):
        chunk = list(example_ids[start:start + _CHUNK])
        deleted += await conn.execute(f"DELETE FROM index_examples WHERE route = ? AND example_id IN "
                                      f"({placeholders(len(chunk))})", route, *chunk)
    return deleted
