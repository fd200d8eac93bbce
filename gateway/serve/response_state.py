"""Conversation state of the Responses API: what `previous_response_id` continues from.

Recent responses are kept in memory, so a client that continues a conversation right away (the
usual case) never waits on the database; every stored response is also written to the store in
the background, PII-scrubbed like calls unless `[privacy] store_raw`, so GET /v1/responses/{id}
and continuations work after a restart or on another replica (with the scrubbed text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.store.base import Store
from gateway.store.responses import StoredResponse

log = logging.getLogger("flywheel.responses")

Scrub = Callable[[Any], Awaitable[Any]]


class ResponseStates:
    """A bounded in-memory map of recent responses in front of the store's `responses` table."""

    def __init__(self, store: Callable[[], Store | None], scrub: Scrub, *, max_entries: int = 5000) -> None:
        self._store = store
        self._scrub = scrub
        self._max = max_entries
        self._recent: OrderedDict[str, StoredResponse] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()

    def remember(self, r: StoredResponse, *, persist: bool) -> None:
        """Keep `r` for continuations; `persist` also writes it to the store, off the request path."""
        self._recent[r.id] = r
        self._recent.move_to_end(r.id)
        while len(self._recent) > self._max:
            self._recent.popitem(last=False)
        if persist and self._store() is not None:
            task = asyncio.create_task(self._save(r), name=f"flywheel-save-{r.id}")
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _save(self, r: StoredResponse) -> None:
        store = self._store()
        if store is None:
            return
        try:
            doc = await self._scrub({"response": r.response, "input_items": r.input_items, "context": r.context})
            await store.save_response(StoredResponse(r.id, r.created_at, r.key_id, doc["response"],
                                                     doc["input_items"], doc["context"]))
        except Exception:
            # the answer was served and the state is in memory: a failed write costs only durability
            log.exception("could not store response %s", r.id)

    async def get(self, response_id: str, key_name: str | None) -> StoredResponse | None:
        """The response, when it exists and was made with the same key (None otherwise)."""
        r = self._recent.get(response_id)
        if r is None:
            store = self._store()
            r = await store.get_response(response_id) if store is not None else None
        if r is None or r.key_id != key_name:
            return None
        return r

    async def delete(self, response_id: str, key_name: str | None) -> bool:
        """Forget the response in memory and in the store; False when unknown to this key."""
        if await self.get(response_id, key_name) is None:
            return False
        self._recent.pop(response_id, None)
        await self.drain()  # a write still in flight would bring it back
        store = self._store()
        if store is not None:
            await store.delete_response(response_id)
        return True

    async def drain(self) -> None:
        """Wait for the background writes in flight (shutdown, delete)."""
        if self._pending:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._pending), return_exceptions=True)
