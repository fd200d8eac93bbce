"""Stored Responses API state (migration 010_responses) on both backends."""

from __future__ import annotations

from gateway.store.responses import StoredResponse
from gateway.store.sql import SqlStore


def _response(rid: str, text: str) -> StoredResponse:
    items = [{"type": "message", "role": "user", "content": "hi ünïcode"}]
    output = [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return StoredResponse(rid, 1_700_000_000.5, "app", {"id": rid, "object": "response", "output": output},
                          items, [*items, *output])


async def test_save_get_replace_delete(store: SqlStore) -> None:
    assert await store.get_response("resp-none") is None
    await store.save_response(_response("resp-1", "first"))
    got = await store.get_response("resp-1")
    assert got == _response("resp-1", "first")
    await store.save_response(_response("resp-1", "second"))  # the same id again: replaced, not doubled
    got = await store.get_response("resp-1")
    assert got is not None and got.context[-1]["content"][0]["text"] == "second"
    assert await store.delete_response("resp-1") is True
    assert await store.get_response("resp-1") is None
    assert await store.delete_response("resp-1") is False


async def test_a_deleted_call_takes_its_stored_response(store: SqlStore) -> None:
    from tests.store.factories import make_call

    call = make_call(1, user="forget-me")
    await store.insert_calls([call])
    await store.save_response(_response(call.id, "answer"))
    await store.forget_user("forget-me")
    assert await store.get_response(call.id) is None
