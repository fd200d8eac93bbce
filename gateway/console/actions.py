"""Sign-in, sign-out and the controls: promote, pause, roll back, freeze, publish a hand-written version.

Every control is a two-step form: the route page links to a confirmation page (what will happen,
a required note), whose POST carries the session's CSRF token. Controls reach learning only
through `LearningControl` (gateway/learning.py); each is recorded with the viewer's key id and
the note. The same POSTs under /console/api take JSON ({"action", "version", "note"}) from a
script holding the admin key as a bearer token, or from the page with an `x-csrf-token` header.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.console import session
from gateway.console.common import Ctx, form_of, gateway_of, page
from gateway.console.render import html, is_api, jsonable, respond
from gateway.errors import GatewayError, InvalidRequest
from gateway.learning import UnknownRoute
from gateway.serve.templating import Template, TemplateError

ACTIONS = {
    "promote": "Promote the canary {version} to everyone now",
    "rollback": "Roll back {version}: the version before it serves again",
    "pause": "Pause the rollout: canaries keep their share, nothing is promoted or rolled back automatically",
    "resume": "Resume the rollout: canaries are decided automatically again",
    "freeze": "Freeze learning for this route: no new candidates until unfrozen",
    "unfreeze": "Unfreeze learning for this route",
}
FAILED_SIGN_IN_DELAY_S = 0.5  # slows guessing the admin key through the sign-in form


def _safe_next(target: str | None) -> str:
    """Only a console path: never an open redirect."""
    return target if target and target.startswith("/console/") and not target.startswith("//") else "/console/routes"


async def login_form(request: Request) -> Response:
    gw = gateway_of(request)
    return html(request, "login.html", next=_safe_next(request.query_params.get("next")), error=None,
                no_key=gw.admin_key() is None, loopback=session.is_loopback(request), viewer=None)


async def login(request: Request) -> Response:
    gw = gateway_of(request)
    admin_key = gw.admin_key()
    form = await form_of(request)
    target = _safe_next(form.get("next"))
    if admin_key is None:
        return RedirectResponse(target, status_code=303)
    origin = request.headers.get("origin")
    if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
        return html(request, "login.html", status=403, next=target, error="Cross-origin sign-in refused.",
                    no_key=False, loopback=False, viewer=None)
    if not hmac.compare_digest(form.get("key", ""), admin_key):
        await asyncio.sleep(FAILED_SIGN_IN_DELAY_S)
        return html(request, "login.html", status=401, next=target, error="That is not the admin key.",
                    no_key=False, loopback=False, viewer=None)
    ttl = gw.settings.console.session_hours * 3600
    value, _ = session.issue(admin_key, ttl)
    response = RedirectResponse(target, status_code=303)
    response.headers.append("set-cookie", session.cookie_header(value, ttl, request.url.scheme == "https"))
    return response


@page(write=True)
async def logout(request: Request, ctx: Ctx) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    response.headers.append("set-cookie", session.cookie_header("", 0, request.url.scheme == "https"))
    return response


@dataclass(frozen=True, slots=True)
class Confirmation:
    route: str
    action: str
    version: str | None
    what: str


@page()
async def confirm(request: Request, ctx: Ctx) -> Response:
    route = ctx.route(request.path_params["route"])
    action = request.query_params.get("action", "")
    if action not in ACTIONS:
        raise InvalidRequest(f"'action' must be one of {', '.join(ACTIONS)}.", param="action")
    version = request.query_params.get("version") or None
    return respond(request, "confirm.html", _confirmation(route, action, version), viewer=ctx.viewer, error=None,
                   note="")


def _confirmation(route: str, action: str, version: str | None) -> Confirmation:
    return Confirmation(route, action, version, ACTIONS[action].format(version=version or "the newest live version"))


@page(write=True)
async def act(request: Request, ctx: Ctx) -> Response:
    route = ctx.route(request.path_params["route"])
    form = await form_of(request)
    action, version, note = form.get("action", ""), form.get("version") or None, form.get("note", "").strip()
    if action not in ACTIONS:
        raise InvalidRequest(f"'action' must be one of {', '.join(ACTIONS)}.", param="action")
    if not note:
        if is_api(request):
            raise InvalidRequest("'note' is required: say why.", param="note")
        data = _confirmation(route, action, version)
        return respond(request, "confirm.html", data, status=400, viewer=ctx.viewer,
                       error="A note saying why is required.", note="")
    learning, who = ctx.control(), ctx.viewer.who
    try:
        if action == "promote":
            if version is None:
                raise InvalidRequest("'version' is required to promote.", param="version")
            result: object = await learning.promote(route, version, who=who, note=note)
        elif action == "rollback":
            result = await learning.roll_back(route, version, who=who, note=note)
        elif action in ("pause", "resume"):
            await learning.set_paused(route, action == "pause", who=who, note=note)
            result = await learning.route_flags(route)
        else:
            await learning.set_frozen(route, action == "freeze", who=who, note=note)
            result = await learning.route_flags(route)
    except UnknownRoute:
        raise GatewayError(f"No route named '{route}'.", status=404, code="route_not_found") from None
    except (ValueError, KeyError) as exc:  # TransitionRefused is a ValueError
        raise GatewayError(str(exc.args[0] if exc.args else exc), status=409, code="action_refused") from None
    if is_api(request):
        return respond(request, "", {"route": route, "action": action, "who": who, "result": jsonable(result)})
    msg = f"{action} done" + (f" ({version})" if version else "")
    return RedirectResponse(f"/console/routes/{quote(route)}?msg={quote(msg)}", status_code=303)


@dataclass(frozen=True, slots=True)
class PublishForm:
    route: str
    current: str | None
    source: str
    learned: str  # the current version's learned sections, kept under the new source


@page()
async def publish_form(request: Request, ctx: Ctx) -> Response:
    route = ctx.route(request.path_params["route"])
    return respond(request, "publish.html", await _publish_form(ctx, route), viewer=ctx.viewer, error=None, note="")


async def _publish_form(ctx: Ctx, route: str) -> PublishForm:
    current = await ctx.registry.current(route, "template")
    try:
        tpl = Template.from_body(current.body) if current else Template("")
    except TemplateError:
        tpl = Template("")
    return PublishForm(route, current.version if current else None, tpl.source, tpl.learned_text())


@page(write=True)
async def publish(request: Request, ctx: Ctx) -> Response:
    route = ctx.route(request.path_params["route"])
    form = await form_of(request)
    source, note = form.get("source", ""), form.get("note", "").strip()
    error = None if note else "A note saying why is required."
    if not source.strip():
        error = "The template text is empty."
    if error:
        if is_api(request):
            raise InvalidRequest(error, param="note" if not note else "source")
        data = await _publish_form(ctx, route)
        return respond(request, "publish.html", PublishForm(route, data.current, source, data.learned), status=400,
                       viewer=ctx.viewer, error=error, note=note)
    try:
        decision = await ctx.control().publish_template(route, source, who=ctx.viewer.who, note=note)
    except (ValueError, KeyError) as exc:
        raise GatewayError(str(exc.args[0] if exc.args else exc), status=409, code="publish_refused") from None
    if is_api(request):
        return respond(request, "", {"route": route, "who": ctx.viewer.who, "result": jsonable(decision)})
    version = getattr(decision, "version", "")
    action, why = getattr(decision, "action", ""), getattr(decision, "reason", "")
    msg = f"{version} written by {ctx.viewer.who}: {action} — {why}"
    return RedirectResponse(f"/console/routes/{quote(route)}?msg={quote(msg)}", status_code=303)


_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


async def static(request: Request) -> Response:
    """The console's own CSS and script (package data; nothing from a CDN)."""
    name = request.path_params["name"]
    if name not in _STATIC:
        return Response(status_code=404)
    body = resources.files("gateway.console").joinpath("static", name).read_bytes()
    return Response(body, media_type=_STATIC[name], headers={"cache-control": "max-age=3600"})
