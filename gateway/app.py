"""create_app(): routes, middleware, and the lifespan that owns every shared resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import admin_api, heap, openai_api
from gateway.auth import AuthMiddleware
from gateway.background import cancel_and_wait
from gateway.capture import Capture
from gateway.errors import GatewayError, NotFound, error_response, internal_error
from gateway.feedback_api import post_feedback
from gateway.learned_routing import LearnedRouting
from gateway.limits import LimitsMiddleware
from gateway.pipeline import Augmenter, Pipeline
from gateway.ratelimit import RateLimiter
from gateway.retention import RetentionService
from gateway.runtime import Runtime, build_runtime, close_unused
from gateway.serving import EmbedderHolder
from gateway.settings import ConfigError, Settings, load_settings
from gateway.store import open_store
from gateway.store.base import Store
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.writer import CallWriter
from learners.loop import LearningLoop

log = logging.getLogger("flywheel")


class Service(Protocol):
    """Something that runs beside the request path for the gateway's lifetime (learners, retention…)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Gateway:
    """The state one running gateway owns: runtime, store, writer, pipeline, background tasks."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.config_path = config_path
        self.runtime: Runtime = build_runtime(settings)
        self.limiter = RateLimiter()
        self.started_at = int(time.time())
        self.store: Store | None = None
        self.writer: CallWriter | None = None
        self.augmenter: Augmenter | None = None
        # one embedder for retrieval, routing and the learners: loaded once, one cache
        self.embedders = EmbedderHolder(lambda: self.settings.learners.embedder)
        self.routing = LearnedRouting(lambda: self.runtime, lambda: self.store, embedders=self.embedders)
        self.pipeline = Pipeline(self.sink, router=self.routing)
        self.capture = Capture(lambda: self.settings.privacy, self._submit_feedback)
        self.capture.listeners.append(self.routing.feedback)
        self._tasks: list[asyncio.Task[Any]] = []
        self.services: list[Service] = []  # started after the writer, stopped before it
        self.learning = LearningLoop(self)  # templates, retrieval, learning (learners/loop.py)
        self.services.append(self.learning)
        self.retention = RetentionService(lambda: self.store, lambda: self.settings.privacy)
        self.services.append(self.retention)
        self.services.append(self.routing)
        self.last_reload_error: str | None = None
        self._admin_key: str | None = None
        self._read_admin_key()

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def admin_key(self) -> str | None:
        return self._admin_key

    def _read_admin_key(self) -> None:
        # read once per (re)load, not per request: an environment lookup on every call adds up
        env = self.settings.auth.admin_key_env
        self._admin_key = (os.environ.get(env) or None) if env else None

    def _submit_feedback(self, fb: FeedbackRecord) -> None:
        if self.writer is not None:
            self.writer.submit_feedback(fb)

    def sink(self, record: CallRecord) -> None:
        """Where every finished call goes: token budgets, then the batched writer. Never blocks."""
        if record.key_id is not None and (record.prompt_tokens or record.completion_tokens):
            self.limiter.record_tokens(record.key_id, (record.prompt_tokens or 0) + (record.completion_tokens or 0))
        if self.writer is not None and self.settings.store.log_calls:
            self.writer.submit_call(record)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings.store
        self.store = open_store(s.url)
        await self.store.migrate()
        if not self.settings.privacy.store_raw:
            # the scrubber's name lists take ~0.4 s to load: not on the event loop, not on first use
            await asyncio.to_thread(lambda: self.capture.scrubber)
        self.writer = CallWriter(self.store, spill_path=Path(s.spill_path), batch_size=s.batch_size,
                                 flush_ms=s.flush_ms, max_queue=s.queue_size, prepare=self.capture.prepare_call)
        await self.writer.start()
        for service in self.services:
            await service.start()
        if self.config_path is not None:
            self._tasks.append(asyncio.create_task(self._watch_config(), name="flywheel-config-watch"))
        heap.settle()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        for service in reversed(self.services):
            await service.stop()
        await self.embedders.aclose()
        if self.writer is not None:
            await self.writer.stop()  # drains the queue: no call row is lost on shutdown
        if self.store is not None:
            await self.store.close()
        await close_unused(self.runtime, None)

    # -- config reload --------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Re-read config.toml; an invalid file is refused and the running config stays in force."""
        assert self.config_path is not None
        try:
            settings = load_settings(self.config_path)
            new = build_runtime(settings, previous=self.runtime)
        except ConfigError as exc:
            self.last_reload_error = str(exc)
            log.error("config reload refused, keeping the running config: %s", exc)
            return False
        old, self.runtime = self.runtime, new
        self._read_admin_key()
        self.last_reload_error = None
        log.info("config reloaded from %s", self.config_path)
        await close_unused(old, new)
        return True

    def _config_stamp(self) -> tuple[float, int] | None:
        assert self.config_path is not None
        try:
            st = self.config_path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime, st.st_size

    async def _watch_config(self) -> None:
        seen = self._config_stamp()
        while True:
            await asyncio.sleep(self.settings.server.reload_interval_s)
            stamp = self._config_stamp()
            if stamp is None or stamp == seen:
                continue
            # Debounce: an editor that truncates then writes leaves a moment where the file is empty,
            # and an empty config.toml is valid (no routes at all). Load only a file at rest.
            await asyncio.sleep(min(0.2, self.settings.server.reload_interval_s))
            if self._config_stamp() != stamp:
                continue
            seen = stamp
            await self.reload()


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    gw = openai_api.gateway_of(request)
    ready = gw.writer is not None
    stats = gw.writer.stats if gw.writer is not None else None
    body = {"status": "ready" if ready else "starting", "writer": stats,
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
    err = GatewayError(str(exc.detail), status=exc.status_code, code="http_error")
    err.type = "invalid_request_error"
    return error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(internal_error())


def create_app(settings: Settings, *, config_path: str | Path | None = None) -> Starlette:
    """The gateway as an ASGI app. `config_path`, when given, is watched and reloaded on change."""
    gw = Gateway(settings, Path(config_path) if config_path else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    routes = [
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/feedback", post_feedback, methods=["POST"]),
        Route("/v1/models/{model_id:path}", openai_api.retrieve_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *admin_api.routes(),
    ]
    middleware = [
        Middleware(LimitsMiddleware, max_body_bytes=settings.server.max_body_bytes,
                   max_concurrency=settings.server.max_concurrency),
        Middleware(AuthMiddleware, runtime=lambda: gw.runtime, admin_key=gw.admin_key, limiter=gw.limiter),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error,
                                        Exception: _unexpected})
    app.state.gateway = gw
    return app
