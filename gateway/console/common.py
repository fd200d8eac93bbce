"""What every console handler shares: the gateway, the viewer, the registry, errors as pages."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.console import session
from gateway.console.render import html, is_api
from gateway.errors import GatewayError, error_response
from gateway.learning import LearningControl, RouteFlags
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.base import Store

if TYPE_CHECKING:
    from gateway.server import Gateway

Handler = Callable[[Request, "Ctx"], Awaitable[Response]]


class Ctx:
    """A console request's gateway and viewer."""

    def __init__(self, request: Request, gw: Gateway, viewer: session.Viewer) -> None:
        self.request = request
        self.gw = gw
        self.viewer = viewer

    @property
    def store(self) -> Store:
        if self.gw.store is None:
            raise GatewayError("The store is not open yet; try again in a moment.", code="not_ready", status=503)
        return self.gw.store

    @property
    def learning(self) -> LearningControl | None:
        return self.gw.learning

    def control(self) -> LearningControl:
        """The learning controls; 503 when learning is not attached to this gateway."""
        if self.gw.learning is None:
            raise GatewayError("Learning is not attached to this gateway.", code="learning_unavailable", status=503)
        return self.gw.learning

    @property
    def registry(self) -> ArtifactRegistry:
        return self.gw.learning.registry if self.gw.learning is not None else ArtifactRegistry(self.store)

    def route(self, name: str) -> str:
        if name not in self.gw.settings.routes:
            raise GatewayError(f"No route named '{name}'.", param="route", code="route_not_found", status=404)
        return name

    async def flags(self, route: str) -> RouteFlags:
        return await self.gw.learning.route_flags(route) if self.gw.learning is not None else RouteFlags()


def gateway_of(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def form_of(request: Request) -> dict[str, str]:
    """A urlencoded form (or a JSON object from a script) as strings; the last value of a repeated field wins."""
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise GatewayError("The request body is not valid JSON.", status=400, code="invalid_json") from None
        if not isinstance(data, dict):
            raise GatewayError("The request body must be a JSON object.", status=400, code="invalid_json")
        return {k: str(v) for k, v in data.items() if v is not None}
    return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}


def page(write: bool = False) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: sign-in (redirect or 401), read-only and CSRF checks for writes, errors as pages."""

    def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            gw = gateway_of(request)
            try:
                viewer = session.viewer_of(request, gw.admin_key())
                ctx = Ctx(request, gw, viewer)
                if write:
                    form = await form_of(request)
                    token = form.get("csrf") or request.headers.get("x-csrf-token")
                    session.check_write(request, viewer, token)
                return await fn(request, ctx)
            except session.SignInRequired as exc:
                if is_api(request):
                    return error_response(GatewayError(str(exc), status=401, code="invalid_session"))
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/console/login?next={quote(target)}", status_code=303)
            except session.Refused as exc:
                return problem(request, GatewayError(str(exc), status=403, code="forbidden"))
            except GatewayError as exc:
                return problem(request, exc)

        return handler

    return wrap


def problem(request: Request, exc: GatewayError) -> Response:
    """An error: OpenAI-shaped JSON for the API, a page for a person."""
    if is_api(request):
        return error_response(exc)
    return html(request, "error.html", status=exc.status, message=str(exc.args[0] if exc.args else exc),
                viewer=None)
