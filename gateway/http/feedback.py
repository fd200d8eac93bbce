"""POST /v1/feedback: explicit feedback on a call (docs/architecture.md, contracts).

    {"call_id": "…", "rating": 1, "score": 0.8, "correction": "…",
     "signal": "used|copied|edited|regenerated|abandoned", "comment": "…", "user": "…"}

`call_id` plus at least one other field; 201 `{"id", "call_id"}`; 404 for an unknown call;
400 naming the field for anything malformed. Rows are append-only and go through the same
batched writer as calls, so a database outage spills them instead of losing them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import InvalidRequest, NotFound
from gateway.http.requests import gateway_of, read_json
from gateway.store.records import CallRecord, FeedbackRecord

if TYPE_CHECKING:
    from gateway.server import Gateway

SIGNALS = ("used", "copied", "edited", "regenerated", "abandoned")
FIELDS = ("call_id", "rating", "score", "correction", "signal", "comment", "user")
MAX_TEXT = 100_000


def parse_feedback(body: dict[str, Any]) -> FeedbackRecord:
    """Validate a feedback body into a record (the diff is added later, once the call is known)."""
    for key in body:
        if key not in FIELDS:
            raise InvalidRequest(f"Unknown field '{key}'; expected some of {', '.join(FIELDS)}.", param=key)
    call_id = body.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("'call_id' is required: the id of the call this feedback is about.", param="call_id")
    if not any(body.get(k) is not None for k in FIELDS[1:6]):
        raise InvalidRequest("Provide at least one of rating, score, correction, signal or comment.", param=None)
    rating = body.get("rating")
    if rating is not None and (isinstance(rating, bool) or rating not in (1, -1)):
        raise InvalidRequest("'rating' must be 1 (good) or -1 (bad).", param="rating")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1):
        raise InvalidRequest("'score' must be a number within [0, 1].", param="score")
    signal = body.get("signal")
    if signal is not None and signal not in SIGNALS:
        raise InvalidRequest(f"'signal' must be one of {', '.join(SIGNALS)}.", param="signal")
    for key in ("correction", "comment", "user"):
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT):
            raise InvalidRequest(f"'{key}' must be a non-empty string of at most {MAX_TEXT} characters.", param=key)
    return FeedbackRecord(call_id=call_id, rating=rating, score=None if score is None else float(score),
                          correction=body.get("correction"), signal=signal, comment=body.get("comment"),
                          user=body.get("user"), source="user")


async def find_call(gw: Gateway, call_id: str) -> tuple[bool, CallRecord | None]:
    """(exists, record): a call still in the writer's queue exists, though its row is not written yet."""
    assert gw.store is not None and gw.writer is not None
    if gw.writer.pending(call_id):
        try:
            await asyncio.wait_for(gw.writer.flush(), 2.0)
        except TimeoutError:
            return True, None
    record = await gw.store.get_call(call_id)
    if record is None and gw.writer.pending(call_id):
        return True, None
    return record is not None, record


async def post_feedback(request: Request) -> Response:
    gw = gateway_of(request)
    fb = parse_feedback(await read_json(request))
    exists, call = await find_call(gw, fb.call_id)
    if not exists:
        raise NotFound(f"No call with id '{fb.call_id}'.", param="call_id", code="call_not_found")
    if fb.correction is not None:
        fb.signal = fb.signal or "edited"
        if call is not None:
            from gateway.capture.corrections import correction_diff, response_text

            fb.correction_diff = correction_diff(response_text(call.response), fb.correction)
    assert gw.writer is not None
    gw.writer.submit_feedback(gw.capture.scrub_feedback(fb))
    gw.capture.feedback_arrived(call, fb)
    return Response(orjson.dumps({"id": fb.id, "call_id": fb.call_id, "object": "feedback"}), status_code=201,
                    media_type="application/json")
