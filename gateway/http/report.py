"""GET /admin/routes/{route}/report?window=1h&windows=24[&metric=any]: gateway/reports/route_report.py as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.capture.quality import check_metric
from gateway.errors import InvalidRequest, NotFound, Overloaded
from gateway.http.requests import gateway_of
from gateway.reports.route_report import parse_duration, route_metric, route_report, route_variants

if TYPE_CHECKING:
    pass

MAX_WINDOWS = 1000


async def route_report_endpoint(request: Request) -> Response:
    """The route's report; 404 for an unknown route, 400 naming a malformed parameter."""
    gw = gateway_of(request)
    route = request.path_params["route"]
    settings = gw.settings
    if route not in settings.routes and route not in settings.models:
        raise NotFound(f"No route or model named '{route}'.", param="route", code="route_not_found")
    q = request.query_params
    try:
        window_s = parse_duration(q.get("window", "1h"))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="window") from None
    windows = q.get("windows", "24")
    if not windows.isdigit() or not 1 <= int(windows) <= MAX_WINDOWS:
        raise InvalidRequest(f"'windows' must be an integer within [1, {MAX_WINDOWS}].", param="windows")
    metric = q.get("metric") or route_metric(settings, route)
    try:
        check_metric(metric)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="metric") from None
    if gw.store is None:
        raise Overloaded("The store is not open yet; try again in a moment.", code="not_ready")
    report = await route_report(gw.store, route, window_s=window_s, windows=int(windows), metric=metric,
                                variants=route_variants(settings, route))
    return Response(orjson.dumps(report), media_type="application/json")
