"""GET /admin/keys: every virtual key with its limits, budget and spend (live, as the limiter
enforces it, and from the store), and GET /admin/keys/report?days=N: spend per key, route and day.

Changes without a restart (gateway/keyring.py; every replica within `[auth] refresh_s`):
POST /admin/keys/{key}/disable, /enable, /rotate (the new secret is in the answer, once; body
`{"grace_s": N}` keeps the old one working N seconds), each with optional `who` and `note`;
GET /admin/keys/{key}/log lists who changed the key when. Editing config.toml still works too."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import InvalidRequest, NotFound
from gateway.http.requests import Body, gateway_of, read_json
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
        st = gw.keys.state(k.key)
        data.append({"key": k.key, "routes": k.routes, "rpm": k.rpm, "tpm": k.tpm, "budget_usd": k.budget_usd,
                     "budget_period": k.budget_period, "disabled": gw.keys.disabled(k.key),
                     "spent_usd": k.spent_usd, "spent_usd_live": live, "calls": k.calls,
                     "changed_at": st.updated_at if st else None, "changed_by": st.updated_by if st else None})
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def keys_report(request: Request) -> Response:
    gw = gateway_of(request)
    report = await key_report(gw.open_store(), gw.settings, days=_days(request))
    rows = [{"key": r.key_id, "route": r.route, "day": r.day, "calls": r.calls, "tokens": r.tokens,
             "cost_usd": r.cost_usd} for r in report.rows]
    return Response(orjson.dumps({"object": "list", "since": report.since, "data": rows}),
                    media_type="application/json")


async def _change(request: Request) -> tuple[str, str, str, Body]:
    """The key named in the path, and who and why from the (optional) JSON body."""
    body = await read_json(request) if await request.body() else {}
    who, note = body.get("who", "admin-api"), body.get("note", "")
    for field, value in (("who", who), ("note", note)):
        if not isinstance(value, str) or len(value) > 200:
            raise InvalidRequest(f"'{field}' must be a string of at most 200 characters.", param=field)
    return request.path_params["key"], who, note, body


def _json(data: object) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def disable_key(request: Request) -> Response:
    key, who, note, _ = await _change(request)
    st = await gateway_of(request).keys.set_disabled(key, True, who=who, note=note)
    return _json({"key": key, "disabled": True, "changed_at": st.updated_at, "changed_by": who})


async def enable_key(request: Request) -> Response:
    key, who, note, _ = await _change(request)
    st = await gateway_of(request).keys.set_disabled(key, False, who=who, note=note)
    return _json({"key": key, "disabled": False, "changed_at": st.updated_at, "changed_by": who})


async def rotate_key(request: Request) -> Response:
    key, who, note, body = await _change(request)
    grace = body.get("grace_s", 0)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= 30 * 86_400:
        raise InvalidRequest("'grace_s' must be a number of seconds between 0 and 2592000.", param="grace_s")
    rotated = await gateway_of(request).keys.rotate(key, who=who, note=note, grace_s=float(grace))
    # the only place the new secret ever appears: it is not logged and the store keeps its hash
    return _json({"key": key, "secret": rotated.secret, "old_secret_valid_until": rotated.old_valid_until,
                  "changed_by": who})


async def key_log(request: Request) -> Response:
    gw = gateway_of(request)
    key = request.path_params["key"]
    if key not in gw.settings.auth.keys:
        raise NotFound(f"No virtual key named '{key}' is configured.", param="key", code="key_not_found")
    events = await gw.open_store().key_events(key)
    return _json({"object": "list", "data": [{"key": e.name, "action": e.action, "who": e.who, "note": e.note,
                                              "at": e.at} for e in events]})


def routes() -> list[Route]:
    """The key endpoints, mounted by build_app under /admin."""
    return [Route("/admin/keys", list_keys, methods=["GET"]), Route("/admin/keys/report", keys_report, methods=["GET"]),
            Route("/admin/keys/{key}/disable", disable_key, methods=["POST"]),
            Route("/admin/keys/{key}/enable", enable_key, methods=["POST"]),
            Route("/admin/keys/{key}/rotate", rotate_key, methods=["POST"]),
            Route("/admin/keys/{key}/log", key_log, methods=["GET"])]
