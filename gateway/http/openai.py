"""The OpenAI surface: /v1/chat/completions, /v1/embeddings, /v1/models, and what every OpenAI
handler shares (the request context, the response headers, streamed responses). Thin handlers:
validate, resolve the route, hand over to the pipeline, render. /v1/responses and /v1/completions
live in responses.py and completions.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import InvalidRequest, model_not_found
from gateway.http.auth import Principal, forbid
from gateway.http.requests import Body, gateway_of, principal_of, read_json, release_later
from gateway.serve.pipeline import RequestContext, identity_headers
from gateway.store.records import CallRecord, new_id

if TYPE_CHECKING:
    from gateway.server import Gateway

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _require_model(body: Body) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    return model


def validate_chat(body: Body) -> None:
    """Check what the gateway itself relies on; everything else is the upstream's business."""
    _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages",
                             code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages",
                             code="empty_array" if isinstance(messages, list) else None)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or dict role is not hashable: check first
            raise InvalidRequest(f"messages[{i}].role must be one of {sorted(ROLES)}.", param=f"messages[{i}].role")
        content = m.get("content")
        # an assistant turn that only calls tools, and a function result, may have null content
        if content is None and role not in ("assistant", "function"):
            raise InvalidRequest(f"messages[{i}].content is required.", param=f"messages[{i}].content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(f"messages[{i}].content must be a string or an array of parts.",
                                 param=f"messages[{i}].content")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        raise InvalidRequest("'n' must be an integer between 1 and 128.", param="n")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema")):
        raise InvalidRequest("'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
                             param="response_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user")


def validate_embeddings(body: Body) -> None:
    _require_model(body)
    inp = body.get("input")
    ok = isinstance(inp, str) or (
        isinstance(inp, list) and inp and (
            all(isinstance(x, str) for x in inp)
            or all(isinstance(x, int) for x in inp)
            or all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in inp)
        )
    )
    if not ok:
        raise InvalidRequest("'input' must be a string, an array of strings, an array of token ids, "
                             "or an array of token-id arrays.", param="input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")


def request_context(request: Request, principal: Principal, body: Body, prefix: str) -> RequestContext:
    """The pipeline's view of the caller; the call id starts with `prefix`."""
    headers = request.headers
    user = body.get("user") if isinstance(body.get("user"), str) else None
    pseudonyms = gateway_of(request).preparer.pseudonymizer() if user is not None else None
    return RequestContext(
        call_id=new_id(prefix),
        key_name=principal.key_name,
        user=user,
        # the keyed pseudonym the store holds: canaries stick to it, so a user's arm is the same on
        # every replica and can be told from the stored calls and feedback
        stored_user=pseudonyms.user(user) if pseudonyms is not None and user is not None else user,
        session_id=headers.get("x-flywheel-session-id"),
        no_log=principal.no_log or headers.get("x-flywheel-no-log", "") in ("1", "true"),
    )


# Upstream headers a client relies on, forwarded unless Flywheel answers them itself.
_FORWARDED = ("x-request-id", "openai-processing-ms", "retry-after", "retry-after-ms")


def response_headers(record: CallRecord, ctx: RequestContext) -> dict[str, str]:
    """Identity headers, then what the upstream said that a client may use (request id, processing
    time, rate-limit budgets); the SDKs read `x-request-id` as the response's `_request_id`."""
    headers = identity_headers(record)
    for name, value in ctx.upstream_headers.items():
        if name in _FORWARDED or name.startswith("x-ratelimit-"):
            headers.setdefault(name, value)
    return headers


def stream_response(request: Request, body: AsyncIterator[bytes], headers: dict[str, str],
                    background: BackgroundTask | None = None) -> Response:
    """A server-sent-events response; an HTTP/1.0 client gets it close-delimited (gateway/http/protocol.py)."""
    return StreamingResponse(body, media_type="text/event-stream", background=background,
                             headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})


def _sent_messages(record: CallRecord) -> object:
    # templates and retrieval send a list of their own, holding the same messages
    return record.request.get("messages") if isinstance(record.request, dict) else None


async def chat_completions(request: Request) -> Response:
    gw = gateway_of(request)
    body = await read_json(request, validate_chat)  # a large body: parsed and checked off the event loop
    route = gw.runtime.resolve(body["model"])
    principal = principal_of(request)
    forbid(principal, route.name)
    ctx = request_context(request, principal, body, "chatcmpl")
    if body.get("stream"):
        stream, record = await gw.pipeline.chat_stream(route, body, ctx)
        # the stream's record is logged before its last chunk: the messages may go after it
        return stream_response(request, stream, response_headers(record, ctx),
                               release_later(body["messages"], _sent_messages(record)))
    out, record = await gw.pipeline.chat(route, body, ctx)
    return Response(orjson.dumps(out), media_type="application/json", headers=response_headers(record, ctx),
                    background=release_later(body["messages"], _sent_messages(record)))


async def embeddings(request: Request) -> Response:
    gw = gateway_of(request)
    body = await read_json(request, validate_embeddings)
    route = gw.runtime.resolve(body["model"])
    principal = principal_of(request)
    forbid(principal, route.name)
    ctx = request_context(request, principal, body, "emb")
    out, record = await gw.pipeline.embeddings(route, body, ctx)
    return Response(orjson.dumps(out), media_type="application/json", headers=response_headers(record, ctx))


def _model_object(gw: Gateway, name: str) -> Body:
    rt = gw.runtime
    models = rt.settings.models
    owner = "flywheel" if name in rt.settings.routes else models[name].provider
    return {"id": name, "object": "model", "created": gw.started_at, "owned_by": owner}


async def list_models(request: Request) -> Response:
    gw = gateway_of(request)
    principal = principal_of(request)
    names = [n for n in (*gw.runtime.settings.routes, *gw.runtime.settings.models) if principal.may_use(n)]
    return Response(orjson.dumps({"object": "list", "data": [_model_object(gw, n) for n in names]}),
                    media_type="application/json")


async def retrieve_model(request: Request) -> Response:
    gw = gateway_of(request)
    model_id = request.path_params["model_id"]
    if model_id not in gw.runtime.routes or not principal_of(request).may_use(model_id):
        raise model_not_found(model_id)
    return Response(orjson.dumps(_model_object(gw, model_id)), media_type="application/json")
