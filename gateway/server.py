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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import gc_pauses
from gateway.background import Service, cancel_and_wait
from gateway.capture.intake import FeedbackIntake
from gateway.capture.prepare import CallPreparer
from gateway.capture.retention import RetentionService
from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.keyring import KeyRing
from gateway.learning import LearningControl, UpstreamActivity
from gateway.limits import Limiter, open_limiter
from gateway.limits.base import IN_FLIGHT, period_id, period_start
from gateway.observability.metrics import CANARY_SHARES, DB_WRITE, GAUGES, CallMetrics, file_size
from gateway.observability.tracing import Tracing
from gateway.privacy.pseudonym import load_key
from gateway.serve.artifacts import ArtifactServer
from gateway.serve.augment import Augmenter
from gateway.serve.embedder import EmbedderHolder
from gateway.serve.live_load import LiveLoad, default_slots
from gateway.serve.pipeline import Pipeline
from gateway.serve.response_state import ResponseStates
from gateway.serve.routing import LearnedRouting
from gateway.serve.runtime import Runtime, build_runtime, close_unused
from gateway.store import open_store
from gateway.store.base import Store
from gateway.store.journal import Journal, journal_folder, journal_key
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
        # rate limits and budgets (gateway/limits/): Redis-shared with [limits] redis_url, else per replica
        self.limiter: Limiter = open_limiter(settings)
        self.metrics = CallMetrics(settings.observability.metrics_per_key)
        self.tracing = Tracing(settings.observability) if settings.observability.tracing else None
        # whether this replica runs the periodic jobs (retention): the wiring hands it the learner lease
        self.leader: Callable[[], bool] = lambda: True
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
        self.live = LiveLoad()  # live calls per upstream: learning's evaluation yields to them
        self.pipeline = Pipeline(self.sink, augmenter=self.augmenter, router=self.routing,
                                 max_response_bytes=lambda: self.settings.server.max_upstream_response_bytes,
                                 live=self.live)
        # capture: new-feedback counter and listeners; pricing, signals and sanitising in the writer's task
        self.intake = FeedbackIntake(self._submit_feedback)
        self.intake.listeners.append(self.routing.feedback)
        self.preparer = CallPreparer(lambda: self.settings.privacy, lambda: self.settings.store, self.intake.accept)
        # Responses API conversation state (previous_response_id), scrubbed like calls when stored
        self.responses = ResponseStates(lambda: self.store, self._scrub_for_store)
        self._tasks: list[asyncio.Task[Any]] = []
        # started after the writer, in order, and stopped before it, in reverse
        self.services: list[Service] = [self.serving]
        self.learning: LearningControl | None = None  # attached by the wiring (flywheel/app.py)
        self.retention = RetentionService(lambda: self.store if self.leader() else None, lambda: self.settings.privacy)
        self.services.append(self.retention)
        self.services.append(self.routing)
        # virtual keys: config.toml's, with the store's run-time changes (disabled, rotated) re-read every refresh_s
        self.keys = KeyRing(lambda: self.settings, lambda: self.store)
        self.services.append(self.keys)
        self.last_reload_error: str | None = None
        self._started = False  # every service started (an edited seed template waits for learning)
        self._seed_deferred: set[str] = set()  # routes whose edited seed waits (a canary runs)
        self._admin_key: str | None = None
        self._read_admin_key()

    def attach_learning(self, control: LearningControl, service: Service) -> None:
        """Let `control` answer the admin API's learning endpoints and run `service` beside serving."""
        self.learning = control
        self.services.append(service)
        self.serving.on_seed_changed = self._publish_seed

    async def _publish_seed(self, route: str, text: str, path: str) -> None:
        """An edited seed template file: a hand-authored version through the evaluation gate, in the
        background (evaluation replays calls) and on the leader only (replicas share the store)."""
        if self.learning is None or not self.leader() or not self._started:
            self.serving.forget_seed(route)  # looked at again at a later refresh (once started, on the leader)
            return
        learning = self.learning

        async def publish() -> None:
            try:
                decision = await learning.publish_template(route, text, who="seed-file",
                                                           note=f"seed template {path} edited")
            except ValueError as exc:  # e.g. a canary is running: tried again at a later refresh
                self.serving.forget_seed(route)
                if route not in self._seed_deferred:  # said once, not at every refresh
                    self._seed_deferred.add(route)
                    log.warning("routes.%s.template: %s edited, not published yet: %s", route, path, exc,
                                extra={"event": "seed_publish_deferred", "route": route})
                return
            except Exception:
                log.exception("routes.%s.template: publishing the edited %s failed", route, path)
                return
            self._seed_deferred.discard(route)
            log.info("routes.%s.template: %s edited: %s", route, path, getattr(decision, "reason", decision),
                     extra={"event": "seed_published", "route": route})

        self._tasks.append(asyncio.create_task(publish(), name=f"flywheel-seed-{route}"))  # one per edit

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def admin_key(self) -> str | None:
        return self._admin_key

    def _read_admin_key(self) -> None:
        # read once per (re)load, not per request: an environment lookup on every call adds up
        env = self.settings.auth.admin_key_env
        self._admin_key = (os.environ.get(env) or None) if env else None

    async def _scrub_for_store(self, doc: Any) -> Any:
        """`doc` as the store may keep it: PII scrubbed off the event loop, unless `store_raw`."""
        if self.settings.privacy.store_raw:
            return doc
        return await asyncio.to_thread(lambda: self.preparer.scrubber.scrub_json(doc))

    def _submit_feedback(self, fb: FeedbackRecord) -> None:
        if self.writer is not None:
            self.writer.submit_feedback(fb)

    def sink(self, record: CallRecord) -> None:
        """Where every finished call goes: limits and spend, metrics, the trace, then the batched writer.
        Never blocks (Redis updates run in the background)."""
        reservation = IN_FLIGHT.get()
        if reservation is not None:
            self.limiter.settle(reservation, (record.prompt_tokens or 0) + (record.completion_tokens or 0))
        if record.key_id is not None and record.cost_usd:
            ks = self.settings.auth.keys.get(record.key_id)
            if ks is not None and ks.budget_usd is not None:  # spend is kept where a budget needs it
                self.limiter.add_spend(record.key_id, record.cost_usd)
        if self.settings.observability.metrics:
            self.metrics.observe(record)
        if self.tracing is not None:
            self.tracing.call_finished(record)
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
        return await asyncio.to_thread(lambda: self.preparer.scrubber)

    def new_feedback(self) -> Mapping[str, int]:
        """Feedback rows per route since the route's last learning cycle began."""
        return self.intake.new_feedback

    def reset_new_feedback(self, route: str) -> None:
        """A learning cycle for `route` begins: count its new feedback from zero."""
        self.intake.reset(route)

    async def route_pending_feedback(self) -> int:
        """Feedback answered 202 wakes its route's learner once its call can be read (capture/intake.py)."""
        store, writer = self.store, self.writer
        if store is None or not self.intake.pending or (writer is not None and not writer.health.up):
            return 0
        return await self.intake.route_pending(store.get_call)

    def live_activity(self, upstream: str) -> UpstreamActivity:
        """Live calls to a provider (or, for a route's name, to its providers together) and its slots."""
        providers = self.settings.providers
        route = self.runtime.routes.get(upstream) if upstream not in providers else None
        names = sorted({t.provider.name for t in route.targets.values()}) if route is not None else [upstream]
        live = self.live
        ends = [e for n in names if (e := live.last_end.get(n)) is not None]
        slots: list[int | None] = []
        for n in names:
            ps = providers.get(n)
            own = getattr(ps, "slots", None)
            slots.append(own if own is not None else default_slots(getattr(ps, "base_url", None)))
        return UpstreamActivity(
            in_flight=sum(live.in_flight.get(n, 0) for n in names),
            busy_s=sum(live.busy_total(n) for n in names),
            last_end=max(ends) if ends else None,
            slots=None if not slots or None in slots else sum(s for s in slots if s is not None),
            started=sum(live.started.get(n, 0) for n in names),
            key=names[0] if len(names) == 1 else upstream)

    def on_feedback(self, wake: Callable[[], None]) -> None:
        """`wake()` after every feedback row the intake accepts (the learners' canary decisions)."""
        self.intake.listeners.append(lambda _fb: wake())

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings.store
        self.store = open_store(s.url)
        # the scrubber's name lists take ~0.4 s to load: not on the event loop, not on first use
        await asyncio.to_thread(self.preparer.load)
        # The writer applies the migrations: at once, or once a database that is down comes back
        # (the gateway serves and spills meanwhile; /readyz says it is degraded).
        # the journal's key derives from the pseudonym secret: replicas sharing it replay each other
        journal = (Journal(journal_folder(s.journal_dir, s.url),
                           journal_key(await asyncio.to_thread(load_key, self.settings.privacy)),
                           fsync=s.journal_fsync) if s.journal_ms else None)
        self.writer = CallWriter(self.store, spill_path=Path(s.spill_path), batch_size=s.batch_size,
                                 flush_ms=s.flush_ms, max_queue=s.queue_size, prepare=self.preparer,
                                 offload_bytes=s.offload_bytes, memory_rows=s.memory_rows, migrate=True,
                                 max_messages=s.max_stored_messages, journal=journal, journal_ms=s.journal_ms)
        await self.writer.start()
        await self.limiter.start()
        if self.writer.health.up:  # the database is down at start: budgets count from zero
            await self._seed_spend()
        GAUGES.sources.append(self._gauges)
        CANARY_SHARES.sources.append(self._canary_shares)
        self.writer.observe_write = lambda table, s: DB_WRITE.labels(table).observe(s)
        for service in self.services:
            await service.start()
        if self.settings.learners.enabled:
            # The learners' first cycle would otherwise load the embedder (seconds of CPU for MiniLM)
            # beside live traffic, slowing the calls around a route's first corrections: load it now,
            # on a thread, while the gateway warms up (requests never wait for it: `current_fn`).
            self.embedders.current_fn()
        self._started = True
        if self.config_path is not None:
            self._tasks.append(asyncio.create_task(self._watch_config(), name="flywheel-config-watch"))
        gc_pauses.settle()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        for service in reversed(self.services):
            await service.stop()
        await self.embedders.aclose()
        if self._gauges in GAUGES.sources:
            GAUGES.sources.remove(self._gauges)
        if self._canary_shares in CANARY_SHARES.sources:
            CANARY_SHARES.sources.remove(self._canary_shares)
        await self.limiter.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        await self.responses.drain()  # stored responses still being written
        if self.writer is not None:
            await self.writer.stop()  # drains the queue: no call row is lost on shutdown
        if self.store is not None:
            await self.store.close()
        await close_unused(self.runtime, None)

    async def _seed_spend(self) -> None:
        """Budgets count from the store's logged spend of the current day and month (restarts lose nothing)."""
        keys = {name for name, ks in self.settings.auth.keys.items() if ks.budget_usd is not None}
        if not keys or self.store is None:
            return
        month = period_start("month")
        day = period_start("day")
        totals: dict[tuple[str, str], float] = {}
        for row in await self.store.spend_by_key(since=month):
            if row.key_id in keys:
                for pid in (period_id("month"), *((period_id("day"),) if row.day >= day else ())):
                    totals[(row.key_id, pid)] = totals.get((row.key_id, pid), 0.0) + row.cost_usd
        for (key, pid), amount in totals.items():
            await self.limiter.seed_spend(key, pid, amount)

    def degraded(self) -> list[str]:
        """What is degraded now, for /readyz: the gateway serves, but capture is not normal."""
        w = self.writer
        if w is None:
            return []
        out: list[str] = []
        if not w.health.up:
            out.append(f"store unavailable since {w.health.since:.0f}: calls and feedback are spilled")
        stats = w.stats
        if stats.held:
            out.append(f"spill file not writable: {stats.held} rows held in memory "
                       f"(of {self.settings.store.memory_rows})")
        if stats.lost:
            out.append(f"{stats.lost} rows lost (database, spill file and memory all full)")
        return out

    def _gauges(self) -> dict[str, float]:
        """Gauges for /metrics, read at scrape time."""
        out = {"flywheel_learner_leader": 1.0 if self.leader() else 0.0,
               "flywheel_spill_bytes": file_size(self.settings.store.spill_path)}
        if self.learning is not None:
            out["flywheel_learner_cycles_running"] = float(self.learning.cycles_running)
        if self.writer is not None:
            out["flywheel_writer_queue_depth"] = float(self.writer.depth)
            out["flywheel_writer_rows_lost"] = float(self.writer.stats.lost)
            out["flywheel_writer_rows_held"] = float(self.writer.stats.held)  # in memory: spill not writable
            out["flywheel_store_up"] = 1.0 if self.writer.health.up else 0.0
        return out

    def _canary_shares(self) -> dict[tuple[str, str], float]:
        """flywheel_canary_share per (route, kind), read at scrape time: 0 where no canary runs."""
        out: dict[tuple[str, str], float] = {}
        for route in self.settings.routes:
            rs = self.augmenter.serving(route)
            template = rs is not None and rs.canary_template is not None
            index = rs is not None and rs.canary_index is not None
            out[(route, "template")] = rs.share if rs is not None and template else 0.0
            out[(route, "index")] = (rs.share if rs.index_share is None else rs.index_share) \
                if rs is not None and index else 0.0
        out.update({(route, "policy"): share for route, share in self.routing.canary_shares().items()})
        return out

    # -- config reload --------------------------------------------------------------------------
    async def reload(self) -> bool:
        """Re-read config.toml; an invalid file is refused and the running config stays in force."""
        assert self.config_path is not None
        try:
            settings = load_settings(self.config_path)
            new = build_runtime(settings, previous=self.runtime)
        except ConfigError as exc:
            self.last_reload_error = str(exc)
            log.error("config reload refused, keeping the running config: %s", exc,
                      extra={"event": "config_reload_refused"})
            return False
        old, self.runtime = self.runtime, new
        self._read_admin_key()
        self.last_reload_error = None
        log.info("config reloaded from %s", self.config_path, extra={"event": "config_reload"})
        before, after = old.settings.server, settings.server
        if (before.host, before.port) != (after.host, after.port):  # the socket is bound once, at start
            log.warning("server.host/port changed from %s:%d to %s:%d: takes effect only after a restart",
                        before.host, before.port, after.host, after.port, extra={"event": "restart_needed"})
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


