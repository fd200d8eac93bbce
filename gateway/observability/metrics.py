"""The flywheel_* Prometheus series, and what counts them.

One process-wide registry (`REGISTRY`): several gateways in one process (tests) share it. The
hot path's cost is a few dict lookups and counter increments per call: labelled children are
cached per (route, variant, key), so `labels()` (a lock and a tuple check) runs once per label set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.store.records import CallRecord

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # off the request path

REQUESTS = Counter("flywheel_requests", "Calls answered, per route, variant and HTTP status",
                   ["route", "variant", "endpoint", "status"], registry=REGISTRY)
ERRORS = Counter("flywheel_errors", "Calls that ended in an error, per route and HTTP status",
                 ["route", "status"], registry=REGISTRY)
LATENCY = Histogram("flywheel_request_latency_seconds", "Call latency, end to end", ["route", "variant"],
                    buckets=_LATENCY, registry=REGISTRY)
TTFT = Histogram("flywheel_ttft_seconds", "Time to the first streamed token", ["route", "variant"],
                 buckets=_LATENCY, registry=REGISTRY)
TOKENS = Counter("flywheel_tokens", "Tokens used, per route, variant, key and kind (prompt, completion)",
                 ["route", "variant", "key", "kind"], registry=REGISTRY)
COST = Counter("flywheel_cost_usd", "Cost in USD, per route, variant and key", ["route", "variant", "key"],
               registry=REGISTRY)
RETRIES = Counter("flywheel_upstream_retries", "Upstream attempts beyond the first on the same model", ["route"],
                  registry=REGISTRY)
FALLBACKS = Counter("flywheel_fallbacks", "Calls answered (or failed) after moving to another model", ["route"],
                    registry=REGISTRY)
RATE_LIMITED = Counter("flywheel_ratelimit_rejections", "Calls refused by a rate limit or budget",
                       ["key", "reason"], registry=REGISTRY)
LEARNER_CYCLES = Counter("flywheel_learner_cycles", "Learning cycles run, per route", ["route"], registry=REGISTRY)
PROMOTIONS = Counter("flywheel_learner_promotions", "Artifacts promoted, per route and kind", ["route", "kind"],
                     registry=REGISTRY)
ROLLBACKS = Counter("flywheel_learner_rollbacks", "Artifacts rolled back, per route and kind", ["route", "kind"],
                    registry=REGISTRY)
# observed where the work happens (the writer's task, the embedder's thread), not per request
DB_WRITE = Histogram("flywheel_db_write_seconds", "Database write latency of one batch, per table (calls, feedback)",
                     ["table"], buckets=_FAST, registry=REGISTRY)
EMBEDDER = Histogram("flywheel_embedder_latency_seconds", "Time to embed one chunk of at most 32 texts, per embedder",
                     ["embedder"], buckets=_FAST, registry=REGISTRY)
Gauges = Callable[[], dict[str, float]]
CanaryShares = Callable[[], dict[tuple[str, str], float]]


class _Gauges(Collector):
    """Gauges read when scraped, from every gateway in the process (summed)."""

    HELP: ClassVar[dict[str, str]] = {
        "flywheel_writer_queue_depth": "Rows waiting in the batched writer's queue",
        "flywheel_spill_bytes": "Size of the spill file (rows waiting for the database)",
        "flywheel_writer_rows_lost": "Rows lost since start (neither the database nor the spill file took them)",
        "flywheel_learner_leader": "1 when this process holds the learner lease",
        "flywheel_learner_cycles_running": "Learning cycles in progress in this process (any route or lane)",
    }

    def __init__(self) -> None:
        self.sources: list[Gauges] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        totals: dict[str, float] = {}
        for source in list(self.sources):
            for name, value in source().items():
                totals[name] = totals.get(name, 0.0) + value
        for name, help_text in self.HELP.items():
            if name in totals:
                yield GaugeMetricFamily(name, help_text, value=totals[name])


GAUGES = _Gauges()
REGISTRY.register(GAUGES)


class _CanaryShares(Collector):
    """flywheel_canary_share{route, kind}: the traffic share each running canary serves (0: none runs),
    read when scraped from every gateway in the process (the largest share wins)."""

    def __init__(self) -> None:
        self.sources: list[CanaryShares] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        shares: dict[tuple[str, str], float] = {}
        for source in list(self.sources):
            for key, value in source().items():
                shares[key] = max(shares.get(key, 0.0), value)
        family = GaugeMetricFamily("flywheel_canary_share", "Share of a route's traffic its canary serves, per "
                                   "artifact kind (template, index, policy); 0 when no canary runs",
                                   labels=["route", "kind"])
        for (route, kind), value in sorted(shares.items()):
            family.add_metric([route, kind], value)
        yield family


CANARY_SHARES = _CanaryShares()
REGISTRY.register(CANARY_SHARES)


def render() -> bytes:
    """The Prometheus text exposition of every series."""
    return generate_latest(REGISTRY)


def file_size(path: str) -> float:
    """Size of a file in bytes, 0 when absent."""
    try:
        return float(os.path.getsize(path))
    except OSError:
        return 0.0


class CallMetrics:
    """Counts finished calls; `observe` is on the hot path (called from the gateway's sink)."""

    def __init__(self, per_key: bool = True) -> None:
        self.per_key = per_key
        self._children: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}

    def _for(self, route: str, variant: str, key: str, endpoint: str) -> tuple[Any, ...]:
        k = (route, variant, key, endpoint)
        c = self._children.get(k)
        if c is None:
            c = self._children[k] = (
                LATENCY.labels(route, variant), TTFT.labels(route, variant),
                TOKENS.labels(route, variant, key, "prompt"), TOKENS.labels(route, variant, key, "completion"),
                COST.labels(route, variant, key), REQUESTS.labels(route, variant, endpoint, "200"),
            )
        return c

    def observe(self, r: CallRecord) -> None:
        """Count one finished call (answered or failed)."""
        key = (r.key_id or "") if self.per_key else ""
        latency, ttft, prompt, completion, cost, ok = self._for(r.route, r.variant, key, r.endpoint)
        if r.status == 200:
            ok.inc()
        else:
            REQUESTS.labels(r.route, r.variant, r.endpoint, str(r.status)).inc()
            ERRORS.labels(r.route, str(r.status)).inc()
        latency.observe(r.latency_ms / 1000)
        if r.ttft_ms is not None:
            ttft.observe(r.ttft_ms / 1000)
        if r.prompt_tokens:
            prompt.inc(r.prompt_tokens)
        if r.completion_tokens:
            completion.inc(r.completion_tokens)
        if r.cost_usd:
            cost.inc(r.cost_usd)
        attempts = r.attempts
        if len(attempts) > 1:
            models = {a.model for a in attempts}
            if len(models) > 1:
                FALLBACKS.labels(r.route).inc()
            RETRIES.labels(r.route).inc(len(attempts) - len(models))
