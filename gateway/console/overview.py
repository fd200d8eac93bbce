"""The data of the Routes and Route detail pages, summed from the store's hourly roll-ups
(gateway/store/rollups.py through console_queries.rollup_buckets): a page view reads a few rows per
hour of its period, never the calls, and no figure is cached between views.

Quality is read from explicit feedback: the mean rating (+1/-1 mapped to 1/0) and the mean score
of the rated calls, and the corrections rate (corrections per call). A *successful* call is one
answered with status 200 and not rated down; its cost counts every call's cost (failures and
down-rated answers too), which is what one good answer really costs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from gateway.config.settings import Settings
from gateway.learning import RouteFlags
from gateway.reports import explain
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.base import Store
from gateway.store.console_queries import RouteAction
from gateway.store.rollups import LATENCY_BUCKETS, LATENCY_RESOLUTION, RollupBucket, quantile


@dataclass(frozen=True, slots=True)
class Figures:
    """A route's (or one bucket's) figures over a period."""

    calls: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    cost_per_call: float | None = None
    cost_per_success: float | None = None
    rating: float | None = None  # share of up-ratings among rated calls
    score: float | None = None
    corrections: int = 0
    corrections_rate: float | None = None
    latency_ms: float | None = None  # mean of the bucket (series) or p50 (totals)
    p95_ms: float | None = None  # totals only; p50/p95 within LATENCY_RESOLUTION


@dataclass(frozen=True, slots=True)
class Artifacts:
    """What serves the route now: current and canary version per kind."""

    current: dict[str, str | None]
    canary: dict[str, str | None]
    canary_share: float


@dataclass(frozen=True, slots=True)
class RouteRow:
    route: str
    policy: str
    variants: list[str]
    artifacts: Artifacts
    flags: RouteFlags
    totals: Figures
    traffic: dict[str, int]  # calls per variant over the period
    series: list[Figures]  # one per bucket, oldest first


@dataclass(frozen=True, slots=True)
class RoutesPage:
    window_hours: int
    bucket_s: float
    since: float
    routes: list[RouteRow]
    latency_resolution: str = LATENCY_RESOLUTION


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: float
    kind: str  # template, index, policy, or "route" for a person's action on the route
    version: str | None
    event: str  # candidate, canary, promoted, rolled_back, rejected; or pause, freeze, publish…
    reason: str
    who: str | None = None


@dataclass(frozen=True, slots=True)
class RouteDetail:
    row: RouteRow
    traffic_series: dict[str, list[int]]
    versions: list[explain.VersionInfo]
    timeline: list[TimelineEntry]
    learning: bool = True
    bucket_s: float = 3600.0
    latency_resolution: str = LATENCY_RESOLUTION


def aligned_since(now: float, width_s: float, buckets: int) -> float:
    """The start of the first of `buckets` buckets whose last one contains `now` (boundaries are
    multiples of the width, so every bucket is whole hours of the roll-ups)."""
    return (now // width_s + 1) * width_s - buckets * width_s


def _figures(bs: list[RollupBucket], quantiles: bool = False) -> Figures:
    n = sum(b.calls for b in bs)
    errors = sum(b.errors for b in bs)
    cost = sum(b.cost_usd for b in bs)
    up, down = sum(b.up for b in bs), sum(b.down for b in bs)
    rated = up + down
    scored = sum(b.scored for b in bs)
    corrections = sum(b.corrections for b in bs)
    successes = max(0, n - errors - down)
    p50 = p95 = None
    if quantiles:
        hist = [sum(b.latency_hist[k] for b in bs) for k in range(LATENCY_BUCKETS)]
        p50, p95 = quantile(hist, 0.5), quantile(hist, 0.95)
    latency = p50 if quantiles else sum(b.latency_ms_sum for b in bs) / n if n else None
    return Figures(n, errors, cost, cost / n if n else None, cost / successes if successes else None,
                   up / rated if rated else None, sum(b.score_sum for b in bs) / scored if scored else None,
                   corrections, corrections / n if n else None, latency, p95)


async def artifacts_of(registry: ArtifactRegistry, route: str, canary_share: float) -> Artifacts:
    """Current and canary versions per kind, from the transition rows alone."""
    states = await registry.all_states(route)
    return Artifacts({k: s.current for k, s in states.items()}, {k: s.canary for k, s in states.items()},
                     canary_share)


async def routes_page(settings: Settings, store: Store, registry: ArtifactRegistry,
                      flags: dict[str, RouteFlags], *, now: float | None = None) -> RoutesPage:
    """Every configured route over the last `[console] window_hours`, in hourly buckets."""
    hours = settings.console.window_hours
    bucket_s = 3600.0
    now = time.time() if now is None else now
    since = aligned_since(now, bucket_s, hours)
    variants = {route: _variants(settings, route) for route in settings.routes}
    by_route: dict[str, list[RollupBucket]] = defaultdict(list)
    for b in await store.rollup_buckets(variants, since=since, width_s=bucket_s, buckets=hours):
        by_route[b.route].append(b)  # one query for every route's figures
    rows = [await _row(settings, registry, route, flags.get(route, RouteFlags()), by_route[route], hours)
            for route in settings.routes]
    return RoutesPage(hours, bucket_s, since, rows)


def _variants(settings: Settings, route: str) -> list[str]:
    return [v.name for v in settings.routes[route].variant_list()]


async def _row(settings: Settings, registry: ArtifactRegistry, route: str, flags: RouteFlags,
               buckets: list[RollupBucket], n: int) -> RouteRow:
    """The route's row from its roll-up sums over `n` buckets."""
    traffic: dict[str, int] = defaultdict(int)
    by_bucket: dict[int, list[RollupBucket]] = defaultdict(list)
    for b in buckets:
        traffic[b.variant] += b.calls
        by_bucket[b.bucket].append(b)
    series = [_figures(by_bucket.get(i, [])) for i in range(n)]
    return RouteRow(route, settings.routes[route].policy.kind, _variants(settings, route),
                    await artifacts_of(registry, route, settings.learners.canary_share), flags,
                    _figures(buckets, quantiles=True), dict(traffic), series)


async def route_detail(settings: Settings, store: Store, registry: ArtifactRegistry, route: str,
                       flags: RouteFlags, *, hours: int, learning: bool, now: float | None = None) -> RouteDetail:
    """One route over `hours` (hourly buckets up to two days, then 6-hourly up to a week, then daily)
    with its learning timeline."""
    bucket_s = 3600.0 if hours <= 48 else 6 * 3600.0 if hours <= 168 else 86400.0
    n = max(1, int(hours * 3600 // bucket_s))
    now = time.time() if now is None else now
    since = aligned_since(now, bucket_s, n)
    buckets = await store.rollup_buckets({route: _variants(settings, route)}, since=since, width_s=bucket_s, buckets=n)
    row = await _row(settings, registry, route, flags, buckets, n)
    mix: dict[str, list[int]] = {v: [0] * n for v in row.variants}
    for b in buckets:
        if 0 <= b.bucket < n:
            mix.setdefault(b.variant, [0] * n)[b.bucket] += b.calls
    versions = [v for kind in ("template", "index", "policy")
                for v in await explain.versions(registry, route, kind)]  # type: ignore[arg-type]
    timeline = [TimelineEntry(t.at, t.kind, t.version, t.to_state, t.reason) for t in await registry.history(route)]
    timeline += [_action_entry(a) for a in await store.list_actions(route)]
    timeline.sort(key=lambda e: e.at, reverse=True)
    return RouteDetail(row, mix, versions, timeline, learning, bucket_s)


def _action_entry(a: RouteAction) -> TimelineEntry:
    return TimelineEntry(a.at, "route", a.target, a.action, a.note, a.who)
