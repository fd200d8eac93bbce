"""The Responses API surface: POST /v1/responses, GET and DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items.

A Responses request is translated to chat (gateway/serve/responses_api.py) and served by the same
pipeline as /v1/chat/completions, so routes, templates, retrieval, learned routing, capture and
feedback apply unchanged; the response id is the call id POST /v1/feedback takes. A provider set to
`responses = "native"` receives the Responses request itself (gateway/serve/responses_native.py)
and its answer reaches the client as it came, under Flywheel's id.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import InvalidRequest, NotFound
from gateway.http.auth import forbid
from gateway.http.openai import request_context, response_headers, stream_response
from gateway.http.requests import gateway_of, principal_of, read_json
from gateway.providers.base import speaks_responses
from gateway.serve import responses_api as ra
from gateway.serve.responses_native import NativeResponses, relay
from gateway.serve.responses_stream import ResponsesStream, render
from gateway.serve.runtime import Runtime
from gateway.store.responses import StoredResponse

Body = ra.Body


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


def _all_native(runtime: Runtime, model: Any) -> bool:
    """Whether every upstream `model` may reach takes Responses natively (False for unknown models)."""
    route = runtime.routes.get(model) if isinstance(model, str) else None
    return route is not None and all(speaks_responses(t.provider) for t in route.targets.values())


async def create_response(request: Request) -> Response:
    """POST /v1/responses."""
    gw = gateway_of(request)
    body = await read_json(request)
    req = ra.parse_request(body, native=_all_native(gw.runtime, body.get("model")))
    route = gw.runtime.resolve(req.model)
    principal = principal_of(request)
    forbid(principal, route.name)
    history: list[Body] = []
    if req.previous_response_id is not None:
        prev = await gw.responses.get(req.previous_response_id, principal.key_name)
        if prev is None:
            raise InvalidRequest(f"Previous response with id '{req.previous_response_id}' not found.",
                                 param="previous_response_id", code="previous_response_not_found")
        history = prev.context
    chat = ra.to_chat(req, history)
    ctx = request_context(request, principal, req.body, "resp")
    created = time.time()

    def remember(response: Body, output: list[Body]) -> None:
        if req.store:
            gw.responses.remember(
                StoredResponse(ctx.call_id, created, principal.key_name, response,
                               ra.input_item_list(req.input_items, ctx.call_id),
                               [*history, *req.input_items, *output]),
                persist=not ctx.no_log)

    # providers set to `responses = "native"` get the Responses request itself (responses_native.py)
    native = (NativeResponses(req, history, chat, ctx.call_id)
              if any(speaks_responses(t.provider) for t in route.targets.values()) else None)
    if req.stream:
        stream, record = await gw.pipeline.chat_stream(route, chat, ctx, via=native)
        if native is not None and native.streamed:
            return stream_response(request, relay(native, stream, lambda final: remember(final, final["output"])),
                                   response_headers(record, ctx))

        def done(rs: ResponsesStream) -> None:
            assert rs.final is not None
            remember(rs.final, rs.output)

        return stream_response(request, render(req, ctx.call_id, created, stream, done),
                               response_headers(record, ctx))
    out, record = await gw.pipeline.chat(route, chat, ctx, via=native)
    passed = native.answer_for(out) if native is not None else None
    response = passed if passed is not None else ra.from_chat(req, ctx.call_id, created, out)
    remember(response, response["output"])
    return Response(orjson.dumps(response), media_type="application/json", headers=response_headers(record, ctx))


async def retrieve_response(request: Request) -> Response:
    """GET /v1/responses/{response_id}."""
    response_id = request.path_params["response_id"]
    r = await gateway_of(request).responses.get(response_id, principal_of(request).key_name)
    if r is None:
        raise _not_found(response_id)
    return Response(orjson.dumps(r.response), media_type="application/json")


async def delete_response(request: Request) -> Response:
    """DELETE /v1/responses/{response_id}."""
    response_id = request.path_params["response_id"]
    if not await gateway_of(request).responses.delete(response_id, principal_of(request).key_name):
        raise _not_found(response_id)
    return Response(orjson.dumps({"id": response_id, "object": "response.deleted", "deleted": True}),
                    media_type="application/json")


async def response_by_id(request: Request) -> Response:
    """GET or DELETE /v1/responses/{response_id} (one route, so a 405 lists both in Allow)."""
    if request.method == "DELETE":
        return await delete_response(request)
    return await retrieve_response(request)


async def list_input_items(request: Request) -> Response:
    """GET /v1/responses/{response_id}/input_items (`limit`, `order`, `after`)."""
    response_id = request.path_params["response_id"]
    r = await gateway_of(request).responses.get(response_id, principal_of(request).key_name)
    if r is None:
        raise _not_found(response_id)
    q = request.query_params
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer between 1 and 100.", param="limit")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
    items = r.input_items if order == "asc" else list(reversed(r.input_items))
    after = q.get("after")
    if after is not None:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    body = {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
    return Response(orjson.dumps(body), media_type="application/json")
