"""POST /v1/feedback: explicit feedback on a call (docs/architecture.md, the feedback contract).

    {"call_id": "…", "rating": 1, "score": 0.8, "correction": "…",
     "signal": "used|copied|edited|regenerated|abandoned", "comment": "…", "user": "…"}

`call_id` plus at least one other field; 400 naming the field for anything malformed.
201 `{"id", "call_id"}` when the call was found; 202 (same body) when it cannot be checked yet:
the database is down, or the call may still be on its way (queued, in flight, spilled). Such
feedback is stored when the database is back, like every row. 404 only for a call id known to
be unknown: the store is reachable, nothing is waiting to be written, and the id (which starts
with its creation time) is older than any call still in flight could be.
Rows are append-only and go through the same batched writer as calls, which scrubs them off the
request path; a database outage spills them instead of losing them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.http.requests import gateway_of, principal_of, read_json
from gateway.store.health import unavailable
from gateway.store.records import CallRecord, FeedbackRecord, id_time

if TYPE_CHECKING:
    from gateway.server import Gateway

SIGNALS = ("used", "copied", "edited", "regenerated", "abandoned")
FIELDS = ("call_id", "rating", "score", "correction", "signal", "comment", "user")
MAX_TEXT = 100_000
LOOKUP_TIMEOUT_S = 2.0  # a store that does not answer within this is treated as down
IN_FLIGHT_S = 900.0  # a call younger than this may still be in flight (streams, retries, deadlines)
CLOCK_SKEW_S = 60.0  # ids from the future beyond this were not made here


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


@dataclass(frozen=True, slots=True)
class CallLookup:
    """What the store says about a call id: found (with its record), pending, or unknown."""

    state: Literal["found", "pending", "unknown"]
    call: CallRecord | None = None


async def find_call(gw: Gateway, call_id: str) -> CallLookup:
    """Look the call up without ever failing because the database is down."""
    assert gw.store is not None and gw.writer is not None
    writer = gw.writer
    if writer.pending(call_id) and writer.health.up:
        try:
            await asyncio.wait_for(writer.flush(), 2.0)
        except TimeoutError:
            return CallLookup("pending")
    if not writer.health.up:  # known down: no lookup, no error, no log line per request
        return CallLookup("pending" if _may_exist(call_id) else "unknown")
    try:
        record = await asyncio.wait_for(gw.store.get_call(call_id), LOOKUP_TIMEOUT_S)
    except Exception as e:
        if not unavailable(e):
            raise
        writer.health.failed(e, "a feedback lookup")
        return CallLookup("pending" if _may_exist(call_id) else "unknown")
    if record is not None:
        return CallLookup("found", record)
    if writer.pending(call_id) or (_may_exist(call_id) and (writer.holds_unwritten() or _recent(call_id))):
        return CallLookup("pending")
    return CallLookup("unknown")


def _may_exist(call_id: str) -> bool:
    # Every id this gateway makes starts with its creation time; anything else never existed here.
    created = id_time(call_id)
    return created is not None and created <= time.time() + CLOCK_SKEW_S


def _recent(call_id: str) -> bool:
    # A call still in flight (a long stream, retries) is logged when it ends: its id is young.
    created = id_time(call_id)
    return created is not None and created >= time.time() - IN_FLIGHT_S


async def post_feedback(request: Request) -> Response:
    gw = gateway_of(request)
    fb = parse_feedback(await read_json(request))
    found = await find_call(gw, fb.call_id)
    if found.state == "unknown":
        raise NotFound(f"No call with id '{fb.call_id}'.", param="call_id", code="call_not_found")
    call = found.call
    principal = principal_of(request)
    owner = principal.key_name
    if call is not None and not principal.admin and owner is not None and call.key_id != owner:
        # feedback feeds learning: a key may only rate and correct its own calls (the admin key: any)
        raise PermissionDenied(f"This API key did not make the call '{fb.call_id}'.", param="call_id",
                               code="not_your_call")
    if fb.correction is not None:
        fb.signal = fb.signal or "edited"
        if call is not None:
            from gateway.capture.corrections import correction_diff, response_text

            fb.correction_diff = correction_diff(response_text(call.response), fb.correction)
    gw.intake.accept(None if call is None else call.route, fb)  # the writer scrubs it, off this handler
    return Response(orjson.dumps({"id": fb.id, "call_id": fb.call_id, "object": "feedback"}),
                    status_code=201 if found.state == "found" else 202, media_type="application/json")
