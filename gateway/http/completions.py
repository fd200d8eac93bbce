"""POST /v1/completions: legacy text completions, translated to chat (gateway/serve/completions_api.py)
and served by the chat pipeline, so routes, templates, retrieval, capture and feedback apply."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.auth import forbid
from gateway.http.openai import request_context, response_headers, stream_response, validate_chat
from gateway.http.requests import gateway_of, principal_of, read_json
from gateway.serve import completions_api


async def completions(request: Request) -> Response:
    """POST /v1/completions (streamed too)."""
    gw = gateway_of(request)
    body = await read_json(request)
    chat = completions_api.to_chat(body)
    validate_chat(chat)
    route = gw.runtime.resolve(chat["model"])
    principal = principal_of(request)
    forbid(principal, route.name)
    ctx = request_context(request, principal, body, "cmpl")
    if chat.get("stream"):
        stream, record = await gw.pipeline.chat_stream(route, chat, ctx)
        return stream_response(request, completions_api.render_stream(body, stream), response_headers(record, ctx))
    out, record = await gw.pipeline.chat(route, chat, ctx)
    return Response(orjson.dumps(completions_api.from_chat(body, out)), media_type="application/json",
                    headers=response_headers(record, ctx))
