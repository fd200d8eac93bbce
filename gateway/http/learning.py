"""/admin endpoints of learning (docs/architecture.md, contracts), mounted by admin.routes().

    POST /admin/learn                               {"route"} -> one cycle now: its LearnReport
    GET  /admin/routes/{route}/templates            template versions (state, created, parent, eval)
    GET  /admin/routes/{route}/templates/diff?from=A&to=B   unified diff + evidence
    POST /admin/routes/{route}/rollback             {"version"?, "reason"?} -> the rollback done
    GET  /admin/routes/{route}/artifacts?kind=K     versions of every kind (or one)
    GET  /admin/routes/{route}/log                  every transition with its reason

`?kind=index` on the templates and diff endpoints shows example-index versions the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.http.requests import gateway_of, read_json
from gateway.learning import LearningControl, UnknownRoute
from gateway.reports import explain
from gateway.store.artifacts import TransitionRefused
from gateway.store.records import ARTIFACT_KINDS, ArtifactKind

if TYPE_CHECKING:
    from gateway.server import Gateway

def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(explain.to_json(data)), status_code=status, media_type="application/json")


def _learning(request: Request) -> tuple[Gateway, LearningControl]:
    gw = gateway_of(request)
    if gw.learning is None:
        raise GatewayError("Learning is not attached to this gateway.", code="learning_unavailable", status=503)
    return gw, gw.learning


def _route(request: Request, gw: Gateway) -> str:
    route = str(request.path_params["route"])
    if route not in gw.settings.routes:
        raise NotFound(f"No route named '{route}'.", param="route", code="route_not_found")
    return route


def _kind(request: Request, default: ArtifactKind = "template") -> ArtifactKind:
    kind = request.query_params.get("kind", default)
    for k in ARTIFACT_KINDS:
        if k == kind:
            return k
    raise InvalidRequest(f"'kind' must be one of {', '.join(ARTIFACT_KINDS)}.", param="kind")


async def learn(request: Request) -> Response:
    _, learning = _learning(request)
    body = await read_json(request)
    route = body.get("route")
    if not isinstance(route, str) or not route:
        raise InvalidRequest("'route' is required: the route to learn for.", param="route")
    try:
        report = await learning.learn_route(route)
    except UnknownRoute:
        raise NotFound(f"No route named '{route}'.", param="route", code="route_not_found") from None
    return _json(report.to_json())


async def templates(request: Request) -> Response:
    gw, learning = _learning(request)
    route, kind = _route(request, gw), _kind(request)
    rows = await explain.versions(learning.registry, route, kind)
    states = await learning.registry.states(route, kind)
    return _json({"object": "list", "route": route, "kind": kind, "current": states.current,
                  "canary": states.canary, "data": rows})


async def template_diff(request: Request) -> Response:
    gw, learning = _learning(request)
    route = _route(request, gw)
    a, b = request.query_params.get("from"), request.query_params.get("to")
    try:
        out = await explain.diff(learning.registry, route, a, b, kind=_kind(request))
    except explain.NoSuchVersion as exc:
        raise NotFound(str(exc.args[0]), param="to" if b else "from", code="version_not_found") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="from") from None
    return _json(out)


async def rollback(request: Request) -> Response:
    gw, learning = _learning(request)
    route = _route(request, gw)
    raw = await request.body()
    body = await read_json(request) if raw.strip() else {}
    version, reason = body.get("version"), body.get("reason") or "rolled back by admin"
    if version is not None and not isinstance(version, str):
        raise InvalidRequest("'version' must be a version id such as 't3'.", param="version")
    try:
        decision = await learning.rollback(route, version, str(reason))
    except ValueError as exc:  # TransitionRefused, or a malformed version id
        status = 409 if isinstance(exc, TransitionRefused) else 400
        raise GatewayError(str(exc), param="version", code="rollback_refused", status=status) from None
    return _json(decision)


async def artifacts(request: Request) -> Response:
    gw, learning = _learning(request)
    route = _route(request, gw)
    kinds = [_kind(request)] if "kind" in request.query_params else list(ARTIFACT_KINDS)
    data = [row for k in kinds for row in await explain.versions(learning.registry, route, k)]
    return _json({"object": "list", "route": route, "data": data})


async def transitions(request: Request) -> Response:
    gw, learning = _learning(request)
    route = _route(request, gw)
    kind = _kind(request) if "kind" in request.query_params else None
    return _json({"object": "list", "route": route, "data": await explain.log(learning.registry, route, kind)})


def routes() -> list[Route]:
    """The learning endpoints (all under /admin, so they need the admin key)."""
    return [
        Route("/admin/learn", learn, methods=["POST"]),
        Route("/admin/routes/{route}/templates", templates, methods=["GET"]),
        Route("/admin/routes/{route}/templates/diff", template_diff, methods=["GET"]),
        Route("/admin/routes/{route}/rollback", rollback, methods=["POST"]),
        Route("/admin/routes/{route}/artifacts", artifacts, methods=["GET"]),
        Route("/admin/routes/{route}/log", transitions, methods=["GET"]),
    ]
