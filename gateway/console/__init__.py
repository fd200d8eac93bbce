"""The team console under /console: what Flywheel learned, why, what it did to quality and cost,
and the controls to stop it (issue #21). Server-rendered (starlette + jinja2, inline SVG charts),
served by the gateway itself; every page is also JSON under /console/api.

It is serving-side HTTP: it reads the store (gateway/store/console_queries.py) and
gateway/reports, and acts on learning only through `LearningControl` (gateway/learning.py).
`[console] enabled = false` leaves it unmounted.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.console import actions, inbox, pages


async def _home(request: Request) -> Response:
    return RedirectResponse("/console/routes", status_code=303)


def _both(path: str, endpoint: object, methods: list[str]) -> list[Route]:
    """The page at /console{path} and its JSON twin at /console/api{path}."""
    return [Route(f"/console{path}", endpoint, methods=methods),  # type: ignore[arg-type]
            Route(f"/console/api{path}", endpoint, methods=methods)]  # type: ignore[arg-type]


def routes() -> list[BaseRoute]:
    """The console's routes, mounted by build_app (gateway/http/app.py) when `[console] enabled`."""
    return [
        Route("/console", _home, methods=["GET"]),
        Route("/console/", _home, methods=["GET"]),
        Route("/console/login", actions.login_form, methods=["GET"]),
        Route("/console/login", actions.login, methods=["POST"]),
        Route("/console/logout", actions.logout, methods=["POST"]),
        Route("/console/static/{name}", actions.static, methods=["GET"]),
        *_both("/routes", pages.routes, ["GET"]),
        *_both("/routes/{route}", pages.route, ["GET"]),
        *_both("/routes/{route}/diff", pages.diff, ["GET"]),
        *_both("/routes/{route}/confirm", actions.confirm, ["GET"]),
        *_both("/routes/{route}/action", actions.act, ["POST"]),
        *_both("/routes/{route}/publish", actions.publish_form, ["GET"]),
        Route("/console/routes/{route}/publish", actions.publish, methods=["POST"]),
        Route("/console/api/routes/{route}/publish", actions.publish, methods=["POST"]),
        *_both("/calls", pages.calls, ["GET"]),
        *_both("/calls/{call_id}", pages.call, ["GET"]),
        *_both("/feedback", inbox.inbox, ["GET"]),
    ]
