"""What every HTTP handler needs from a request: the gateway, the caller, the JSON body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request

from gateway.errors import InvalidRequest
from gateway.http.auth import ANONYMOUS, Principal

if TYPE_CHECKING:
    from gateway.server import Gateway

Body = dict[str, Any]


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def principal_of(request: Request) -> Principal:
    p: Principal = request.scope.get("state", {}).get("principal", ANONYMOUS)
    return p


async def read_json(request: Request) -> Body:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    raw = await request.body()
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body
