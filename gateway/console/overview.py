"""The data of the Routes and Route detail pages, aggregated by the store (gateway/store/console_queries.py).

Quality is read from explicit feedback: the mean rating (+1/-1 mapped to 1/0) and the mean score
of the rated calls, and the corrections rate (corrections per call). A *successful* call is one
answered with status 200 and not rated down; its cost counts every call's cost (failures and
down-rated answers too), which is what one good answer really costs.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field

from gateway.config.settings import Settings
from gateway.console.cache import BucketCache, aligned_since
from gateway.learning import RouteFlags
from gateway.reports import explain
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.base import Store
from gateway.store.console_queries import CallBucket, FeedbackBucket, RouteAction


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
    p95_ms: float | None = None


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
    buckets: list[CallBucket] = field(default_factory=list, repr=False)  # what the figures came from


@dataclass(frozen=True, slots=True)
class RoutesPage:
    window_hours: int
    bucket_s: float
    since: float
    routes: list[RouteRow]


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


def _figures(calls: list[CallBucket], fb: list[FeedbackBucket], p50: float | None = None,
             p95: float | None = None) -> Figures:
    n = sum(b.calls for b in calls)
    errors = sum(b.errors for b in calls)
    cost = sum(b.cost_usd for b in calls)
    rated = sum(b.rated for b in fb)
    up = (sum(b.rating_sum for b in fb) + rated) / 2  # ratings are +1 / -1
    scored = sum(b.scored for b in fb)
    down = sum(b.down for b in fb)
    corrections = sum(b.corrections for b in fb)
    successes = max(0, n - errors - down)
    latency = p50 if p50 is not None or not n else sum(b.latency_ms_sum for b in calls) / n
    return Figures(n, errors, cost, cost / n if n else None, cost / successes if successes else None,
                   up / rated if rated else None, sum(b.score_sum for b in fb) / scored if scored else None,
                   corrections, corrections / n if n else None, latency, p95)


async def artifacts_of(registry: ArtifactRegistry, route: str, canary_share: float) -> Artifacts:
    """Current and canary versions per kind, from the transition rows alone."""
    states = await registry.all_states(route)
    return Artifacts({k: s.current for k, s in states.items()}, {k: s.canary for k, s in states.items()},
                     canary_share)


async def routes_page(settings: Settings, store: Store, registry: ArtifactRegistry,
                      flags: dict[str, RouteFlags], *, cache: BucketCache, now: float | None = None) -> RoutesPage:
    """Every configured route over the last `[console] window_hours`, in hourly buckets."""
    hours = settings.console.window_hours
    bucket_s = 3600.0
    now = time.time() if now is None else now
    since = aligned_since(now, bucket_s, hours)
    rows = [await _row(settings, store, registry, route, flags.get(route, RouteFlags()), since, bucket_s, hours,
                       cache, now) for route in settings.routes]
    return RoutesPage(hours, bucket_s, since, rows)


async def _row(settings: Settings, store: Store, registry: ArtifactRegistry, route: str, flags: RouteFlags,
               since: float, bucket_s: float, n: int, cache: BucketCache, now: float) -> RouteRow:
    rs = settings.routes[route]
    variants = [v.name for v in rs.variant_list()]

    async def calls_at(start: float) -> list[CallBucket]:
        return await store.call_buckets(route, since=start, width_s=bucket_s, buckets=1, variants=variants)

    async def feedback_at(start: float) -> list[FeedbackBucket]:
        return await store.feedback_buckets(route, since=start, width_s=bucket_s, buckets=1)

    calls = [dataclasses.replace(b, bucket=i) for i, rows in
             await cache.buckets(("calls", route, tuple(variants)), since, bucket_s, n, now, calls_at) for b in rows]
    fb = [dataclasses.replace(b, bucket=i) for i, rows in
          await cache.buckets(("feedback", route), since, bucket_s, n, now, feedback_at) for b in rows]
    p50, p95 = await store.latency_quantiles(route, since=since)
    traffic: dict[str, int] = defaultdict(int)
    by_c: dict[int, list[CallBucket]] = defaultdict(list)
    by_f: dict[int, list[FeedbackBucket]] = defaultdict(list)
    for b in calls:
        traffic[b.variant] += b.calls
        by_c[b.bucket].append(b)
    for f in fb:
        by_f[f.bucket].append(f)
    series = [_figures(by_c.get(i, []), by_f.get(i, [])) for i in range(n)]
    return RouteRow(route, rs.policy.kind, variants,
                    await artifacts_of(registry, route, settings.learners.canary_share), flags,
                    _figures(calls, fb, p50, p95), dict(traffic), series, calls)


async def route_detail(settings: Settings, store: Store, registry: ArtifactRegistry, route: str,
                       flags: RouteFlags, *, hours: int, learning: bool, cache: BucketCache,
                       now: float | None = None) -> RouteDetail:
    """One route over `hours` (hourly buckets up to two days, then 6-hourly up to a week, then daily)
    with its learning timeline."""
    bucket_s = 3600.0 if hours <= 48 else 6 * 3600.0 if hours <= 168 else 86400.0
    n = max(1, int(hours * 3600 // bucket_s))
    now = time.time() if now is None else now
    since = aligned_since(now, bucket_s, n)
    row = await _row(settings, store, registry, route, flags, since, bucket_s, n, cache, now)
    mix: dict[str, list[int]] = {v: [0] * n for v in row.variants}
    for b in row.buckets:
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
