"""Stored Responses API state (POST /v1/responses with `store`): what `previous_response_id`,
GET/DELETE /v1/responses/{id} and its input-items listing read. `ResponseQueries` is mixed into
`SqlStore`; rows are one JSON document per response (migration 010_responses)."""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.store.dialect import Conn

Body = dict[str, Any]


@dataclass(slots=True)
class StoredResponse:
    """One response and the conversation a continuation replays."""

    id: str
    created_at: float
    key_id: str | None  # the virtual key that created it: only that key may read or continue it
    response: Body  # the `response` object as answered
    input_items: list[Body]  # this request's input items, as listed by GET …/input_items
    context: list[Body]  # earlier turns' items + this input + this output (instructions excluded)


MIGRATION = """
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    key_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX responses_created ON responses (created_at)
"""


class ResponseQueries:
    """Save, read and delete stored responses; mixed into `SqlStore`."""

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]: ...

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Conn]: ...

    async def save_response(self, r: StoredResponse) -> None:
        """Insert or replace one stored response."""
        body = orjson.dumps({"response": r.response, "input_items": r.input_items, "context": r.context}).decode()
        async with self._write() as conn:
            await conn.execute("DELETE FROM responses WHERE id = ?", r.id)
            await conn.execute("INSERT INTO responses (id, created_at, key_id, body) VALUES (?, ?, ?, ?)",
                               r.id, float(r.created_at), r.key_id, body)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        """One stored response, or None."""
        async with self._read() as conn:
            rows = await conn.fetch("SELECT id, created_at, key_id, body FROM responses WHERE id = ?", response_id)
        if not rows:
            return None
        row = rows[0]
        doc = orjson.loads(row[3])
        return StoredResponse(row[0], row[1], row[2], doc["response"], doc["input_items"], doc["context"])

    async def delete_response(self, response_id: str) -> bool:
        """Delete one stored response; False when there was none."""
        async with self._write() as conn:
            return await conn.execute("DELETE FROM responses WHERE id = ?", response_id) > 0
