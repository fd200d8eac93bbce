"""GET /admin/keys: every virtual key with its limits, budget and spend (live, as the limiter
enforces it, and from the store), and GET /admin/keys/report?days=N: spend per key, route and day.
Keys are disabled (`disabled = true`) or rotated (a new `hash`) in config.toml, applied on reload."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import InvalidRequest
from gateway.http.requests import gateway_of
from gateway.limits.base import period_id
from gateway.reports.key_spend import key_report


def _days(request: Request) -> int:
    raw = request.query_params.get("days", "7")
    if not raw.isdigit() or not 1 <= int(raw) <= 366:
        raise InvalidRequest("'days' must be an integer between 1 and 366.", param="days")
    return int(raw)


async def list_keys(request: Request) -> Response:
    gw = gateway_of(request)
    report = await key_report(gw.open_store(), gw.settings, days=1)
    data = []
    for k in report.keys:
        live = await gw.limiter.spent(k.key, period_id(k.budget_period))  # type: ignore[arg-type]
        data.append({"key": k.key, "routes": k.routes, "rpm": k.rpm, "tpm": k.tpm, "budget_usd": k.budget_usd,
                     "budget_period": k.budget_period, "disabled": k.disabled, "spent_usd": k.spent_usd,
                     "spent_usd_live": live, "calls": k.calls})
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def keys_report(request: Request) -> Response:
    gw = gateway_of(request)
    report = await key_report(gw.open_store(), gw.settings, days=_days(request))
    rows = [{"key": r.key_id, "route": r.route, "day": r.day, "calls": r.calls, "tokens": r.tokens,
             "cost_usd": r.cost_usd} for r in report.rows]
    return Response(orjson.dumps({"object": "list", "since": report.since, "data": rows}),
                    media_type="application/json")


def routes() -> list[Route]:
    """The key endpoints, mounted by build_app under /admin."""
    return [Route("/admin/keys", list_keys, methods=["GET"]), Route("/admin/keys/report", keys_report, methods=["GET"])]
