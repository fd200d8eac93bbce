"""The Gateway: the state one running gateway owns (runtime, store, writer, pipeline, services) and its lifecycle.

It is the serving side's root object. The HTTP layer (gateway/http/) reaches it through
`gateway_of(request)`; learners reach it only through the narrow `LearningHost` interface it
implements (gateway/learning.py); the wiring (flywheel/app.py) attaches learning to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import gc_pauses
from gateway.background import Service, cancel_and_wait
from gateway.capture.intake import Capture
from gateway.capture.retention import RetentionService
from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.learning import LearningControl
from gateway.serve.artifacts import ArtifactServer
from gateway.serve.augment import Augmenter
from gateway.serve.embedder import EmbedderHolder
from gateway.serve.pipeline import Pipeline
from gateway.serve.ratelimit import RateLimiter
from gateway.serve.routing import LearnedRouting
from gateway.serve.runtime import Runtime, build_runtime, close_unused
from gateway.store import open_store
from gateway.store.base import Store
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.writer import CallWriter

if TYPE_CHECKING:
    from gateway.privacy.scrubber import Scrubber

log = logging.getLogger("flywheel")


class Gateway:
    """The state one running gateway owns: runtime, store, writer, pipeline, background services."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.config_path = config_path
        self.runtime: Runtime = build_runtime(settings)
        self.limiter = RateLimiter()
        self.started_at = int(time.time())
        self.store: Store | None = None
        self.writer: CallWriter | None = None
        # one embedder for retrieval, routing and the learners: loaded once, one cache
        self.embedders = EmbedderHolder(lambda: self.settings.learners.embedder)
        # templates render and indices retrieve whether or not learning runs
        self.augmenter = Augmenter(lambda: self.settings, self.embedders.embed_fn)
        config_dir = config_path.parent if config_path else Path.cwd()
        self.serving = ArtifactServer(lambda: self.store, self.augmenter, self.embedders, lambda: self.settings,
                                      config_dir)
        self.routing = LearnedRouting(lambda: self.runtime, lambda: self.store, embedders=self.embedders)
        self.pipeline = Pipeline(self.sink, augmenter=self.augmenter, router=self.routing)
        self.capture = Capture(lambda: self.settings.privacy, self._submit_feedback)
        self.capture.listeners.append(self.routing.feedback)
        self._tasks: list[asyncio.Task[Any]] = []
        # started after the writer, in order, and stopped before it, in reverse
        self.services: list[Service] = [self.serving]
        self.learning: LearningControl | None = None  # attached by the wiring (flywheel/app.py)
        self.retention = RetentionService(lambda: self.store, lambda: self.settings.privacy)
        self.services.append(self.retention)
        self.services.append(self.routing)
        self.last_reload_error: str | None = None
        self._admin_key: str | None = None
        self._read_admin_key()

    def attach_learning(self, control: LearningControl, service: Service) -> None:
        """Let `control` answer the admin API's learning endpoints and run `service` beside serving."""
        self.learning = control
        self.services.append(service)

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

    # -- LearningHost (gateway/learning.py) -----------------------------------------------------
    def open_store(self) -> Store:
        """The store; RuntimeError before start()."""
        if self.store is None:
            raise RuntimeError("the gateway has not started: its store is not open")
        return self.store

    async def flush_captured(self, timeout_s: float) -> None:
        """Write what is queued now, waiting at most `timeout_s`."""
        if self.writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.writer.flush(), timeout_s)

    async def scrubber(self) -> Scrubber | None:
        """The capture's PII scrubber, built off the event loop on first use."""
        return await asyncio.to_thread(lambda: self.capture.scrubber)

    def new_feedback(self) -> Mapping[str, int]:
        """Feedback rows per route since the route's last learning cycle began."""
        return self.capture.new_feedback

    def reset_new_feedback(self, route: str) -> None:
        """A learning cycle for `route` begins: count its new feedback from zero."""
        self.capture.new_feedback[route] = 0

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
        gc_pauses.settle()

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


