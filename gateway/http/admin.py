"""/admin/*: routes, artifacts, diffs, learning on demand, rollback (docs/architecture.md, contracts).

Every endpoint here needs the admin key (see gateway/http/auth.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http import learning  # the learning endpoints (templates, diffs, learn, rollback)
from gateway.http.report import route_report_endpoint
from gateway.http.requests import gateway_of

if TYPE_CHECKING:
    pass


def json_response(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def list_routes(request: Request) -> Response:
    gw = gateway_of(request)
    routes = [
        {"route": name, "variants": [v.name for v in rs.variant_list()], "policy": rs.policy.kind,
         "fallbacks": rs.fallbacks}
        for name, rs in gw.settings.routes.items()
    ]
    return json_response({"object": "list", "data": routes})


def routes() -> list[Route]:
    """The admin endpoints, mounted by build_app (gateway/http/app.py)."""
    return [*learning.routes(), Route("/admin/routes", list_routes, methods=["GET"]),
            Route("/admin/routes/{route}/report", route_report_endpoint, methods=["GET"])]
