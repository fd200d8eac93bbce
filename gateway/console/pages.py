"""The console's read pages (each also JSON under /console/api): routes, route detail, diff, calls, call.

The feedback inbox is in inbox.py; sign-in and the controls (forms that change state) in actions.py.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.capture.corrections import response_text
from gateway.console.common import Ctx, page
from gateway.console.overview import route_detail, routes_page
from gateway.console.render import pseudonym, respond
from gateway.errors import InvalidRequest, NotFound
from gateway.reports import explain
from gateway.store.console_queries import CallFilter, CallSummary, FeedbackFilter, StatusFilter
from gateway.store.records import ARTIFACT_KINDS, ArtifactKind, Attempt, FeedbackRecord

PAGE_SIZE = 50


@page()
async def routes(request: Request, ctx: Ctx) -> Response:
    flags = {r: await ctx.flags(r) for r in ctx.gw.settings.routes}
    data = await routes_page(ctx.gw.settings, ctx.store, ctx.registry, flags)
    return respond(request, "routes.html", data, viewer=ctx.viewer)


@page()
async def route(request: Request, ctx: Ctx) -> Response:
    name = ctx.route(request.path_params["route"])
    hours = _int(request, "hours", 24, 1, 24 * 90)
    data = await route_detail(ctx.gw.settings, ctx.store, ctx.registry, name, await ctx.flags(name), hours=hours,
                              learning=ctx.learning is not None)
    return respond(request, "route.html", data, viewer=ctx.viewer, hours=hours,
                   message=request.query_params.get("msg"))


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise InvalidRequest(f"'{name}' must be an integer within [{lo}, {hi}].", param=name)
    return int(raw)


@dataclass(frozen=True, slots=True)
class DiffPage:
    diff: explain.VersionDiff
    lines: list[tuple[str, str]]  # (css class, line)
    added: list[str] = field(default_factory=list)  # index: example ids added…
    removed: list[str] = field(default_factory=list)  # …and retired
    produced_by: str = ""


@page()
async def diff(request: Request, ctx: Ctx) -> Response:
    name = ctx.route(request.path_params["route"])
    kind = request.query_params.get("kind", "template")
    if kind not in ARTIFACT_KINDS:
        raise InvalidRequest(f"'kind' must be one of {', '.join(ARTIFACT_KINDS)}.", param="kind")
    a, b = request.query_params.get("from") or None, request.query_params.get("to") or None
    try:
        d = await explain.diff(ctx.registry, name, a, b, kind=_kind(kind))
    except explain.NoSuchVersion as exc:
        raise NotFound(str(exc.args[0]), param="to", code="version_not_found") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="from") from None
    ev = d.evaluation if isinstance(d.evaluation, dict) else {}
    rec = await ctx.registry.get(name, d.kind, d.to_version)
    lines = [(_line_class(line), line) for line in d.diff.splitlines()]
    data = DiffPage(d, lines, [str(x) for x in ev.get("added", [])], [str(x) for x in ev.get("removed", [])],
                    rec.produced_by if rec else "")
    return respond(request, "diff.html", data, viewer=ctx.viewer)


def _kind(kind: str) -> ArtifactKind:
    return next(k for k in ARTIFACT_KINDS if k == kind)


def _line_class(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "meta"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "ctx")


@dataclass(frozen=True, slots=True)
class CallsPage:
    filters: dict[str, str]
    calls: list[CallSummary]
    next_before: str | None  # the `before` cursor of the next page


_FEEDBACK: tuple[FeedbackFilter, ...] = ("any", "none", "up", "down", "corrected")
_STATUS: tuple[StatusFilter, ...] = ("ok", "error")


def _time(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name) or None
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            value = time.mktime(time.strptime(raw, "%Y-%m-%dT%H:%M")) - time.timezone
        except ValueError:
            raise InvalidRequest(f"'{name}' must be unix seconds or YYYY-MM-DDTHH:MM (UTC).", param=name) from None
    return value


@page()
async def calls(request: Request, ctx: Ctx) -> Response:
    q = request.query_params
    status, feedback = q.get("status") or None, q.get("feedback") or None
    if status is not None and status not in _STATUS:
        raise InvalidRequest("'status' must be ok or error.", param="status")
    if feedback is not None and feedback not in _FEEDBACK:
        raise InvalidRequest(f"'feedback' must be one of {', '.join(_FEEDBACK)}.", param="feedback")
    f = CallFilter(route=q.get("route") or None, variant=q.get("variant") or None, key_id=q.get("key") or None,
                   user=q.get("user") or None,
                   status=next((s for s in _STATUS if s == status), None),
                   feedback=next((x for x in _FEEDBACK if x == feedback), None),
                   signal=q.get("signal") or None, since=_time(request, "since"), until=_time(request, "until"))
    before = None
    if q.get("before"):
        at, _, cid = q["before"].partition("_")
        try:
            before = (float(at), cid)
        except ValueError:
            raise InvalidRequest("'before' is a cursor from a previous page.", param="before") from None
    rows = [dataclasses.replace(r, user=None if r.user is None else pseudonym(r.user))
            for r in await ctx.store.search_calls(f, limit=PAGE_SIZE, before=before)]
    nxt = f"{rows[-1].created_at!r}_{rows[-1].id}" if len(rows) == PAGE_SIZE else None
    filters = {k: v for k, v in q.items() if k != "before" and v}
    data = CallsPage(filters, rows, nxt)
    return respond(request, "calls.html", data, viewer=ctx.viewer, routes=list(ctx.gw.settings.routes))


@dataclass(frozen=True, slots=True)
class RetrievedExample:
    id: str
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class CallPage:
    id: str
    created_at: float
    route: str
    variant: str
    model: str
    key_id: str | None
    user: str
    status: int
    error: str | None
    stream: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    latency_ms: float
    ttft_ms: float | None
    messages: list[dict[str, Any]]  # as sent upstream, PII scrubbed before storage
    params: dict[str, Any]
    answer: str
    response: Any
    attempts: list[Attempt]
    feedback: list[FeedbackRecord]
    artifacts: dict[str, str | None]
    policy_reason: str
    retrieved: list[RetrievedExample]
    no_log: bool


@page()
async def call(request: Request, ctx: Ctx) -> Response:
    call_id = request.path_params["call_id"]
    rec = await ctx.store.get_call(call_id)
    if rec is None:
        raise NotFound(f"No call with id '{call_id}'.", param="call_id", code="call_not_found")
    req = rec.request if isinstance(rec.request, dict) else {}
    messages = [m for m in req.get("messages", []) if isinstance(m, dict)]
    params = {k: v for k, v in req.items() if k not in ("messages", "input")}
    retrieved: list[RetrievedExample] = []
    if rec.retrieved_ids and rec.index_version:
        art = await ctx.registry.get(rec.route, "index", rec.index_version)
        body = art.body if art is not None and isinstance(art.body, dict) else {}
        by_id = {str(e.get("id")): e for e in body.get("examples", []) if isinstance(e, dict)}
        retrieved = [RetrievedExample(i, str(by_id.get(i, {}).get("input", "")),
                                      str(by_id.get(i, {}).get("output", ""))) for i in rec.retrieved_ids]
    feedback = await ctx.store.list_feedback(call_ids=[rec.id])
    feedback = [_scrub_user(fb) for fb in feedback]
    data = CallPage(rec.id, rec.created_at, rec.route, rec.variant, rec.model, rec.key_id, pseudonym(rec.user),
                    rec.status, rec.error, rec.stream, rec.prompt_tokens, rec.completion_tokens, rec.cost_usd,
                    rec.latency_ms, rec.ttft_ms, messages, params, response_text(rec.response), rec.response,
                    rec.attempts, feedback, {"template": rec.template_version, "index": rec.index_version,
                                             "policy": rec.policy_version},
                    rec.policy_reason, retrieved, rec.no_log)
    return respond(request, "call.html", data, viewer=ctx.viewer)


def _scrub_user(fb: FeedbackRecord) -> FeedbackRecord:
    """Feedback as the console shows it: the end user pseudonymised."""
    if fb.user is not None:
        fb.user = pseudonym(fb.user)
    return fb


