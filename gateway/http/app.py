"""build_app(): the gateway's ASGI app: routes, middleware, error handlers and the lifespan that starts it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import console
from gateway.errors import GatewayError, NotFound, error_response, internal_error
from gateway.http import admin, completions, keys, openai, responses
from gateway.http.auth import AuthMiddleware
from gateway.http.cors import CorsMiddleware
from gateway.http.feedback import post_feedback
from gateway.http.limits import LimitsMiddleware
from gateway.http.requests import gateway_of
from gateway.observability import metrics
from gateway.observability.tracing import TracingMiddleware
from gateway.server import Gateway

log = logging.getLogger("flywheel")


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of the flywheel_* series (rendered now, counted per call)."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    gw = gateway_of(request)
    ready = gw.writer is not None
    stats = gw.writer.stats if gw.writer is not None else None
    degraded = gw.degraded()  # still serving (200), but capture is not what it should be
    body = {"status": ("degraded" if degraded else "ready") if ready else "starting", "degraded": degraded,
            "store": gw.writer.health if gw.writer is not None else None, "writer": stats,
            "config_error": gw.last_reload_error}
    return Response(orjson.dumps(body, default=_default), status_code=200 if ready else 503,
                    media_type="application/json")


def _default(o: object) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        return {k: getattr(o, k) for k in o.__dataclass_fields__}
    raise TypeError


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"Unknown path {request.url.path}.", code="unknown_url"))
    err = GatewayError(str(exc.detail), status=exc.status_code, code="http_error",
                       headers=dict(exc.headers or {}))  # a 405 says what is Allowed
    err.type = "invalid_request_error"
    return error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(internal_error())


def build_app(gw: Gateway) -> Starlette:
    """The ASGI app serving `gw`; its lifespan starts and stops the gateway."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    settings = gw.settings
    routes = [
        Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
        Route("/v1/completions", completions.completions, methods=["POST"]),
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.response_by_id, methods=["GET", "DELETE"]),
        Route("/v1/responses/{response_id}/input_items", responses.list_input_items, methods=["GET"]),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/v1/feedback", post_feedback, methods=["POST"]),
        Route("/v1/models/{model_id:path}", openai.retrieve_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *admin.routes(),
        *keys.routes(),
        *(console.routes() if settings.console.enabled else []),  # the team console (gateway/console/)
        *([Route("/metrics", metrics_endpoint, methods=["GET"])] if settings.observability.metrics else []),
    ]
    middleware = [
        # browsers' preflights are answered before limits and keys (gateway/http/cors.py)
        Middleware(CorsMiddleware, origins=lambda: gw.settings.server.cors_origins,
                   keyless=lambda: not gw.runtime.key_hashes),
        Middleware(LimitsMiddleware, max_body_bytes=settings.server.max_body_bytes,
                   max_concurrency=settings.server.max_concurrency),
        Middleware(AuthMiddleware, runtime=lambda: gw.runtime, admin_key=gw.admin_key, limiter=gw.limiter,
                   keys=gw.keys),
    ]
    if gw.tracing is not None:  # outermost: the span covers everything, refusals included
        middleware.insert(0, Middleware(TracingMiddleware, tracing=gw.tracing))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error,
                                        Exception: _unexpected})
    app.state.gateway = gw
    return app
