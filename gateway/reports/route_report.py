"""Per route and variant, over time windows: traffic share, quality, cost per call and per
successful call, p50 latency. Read from the store; `flywheel routes report ROUTE` and
`GET /admin/routes/{route}/report` print and serve it.

Definitions (per window, per variant = the variant that answered):
- share: the variant's calls / the route's chat calls in the window;
- quality: mean quality of the calls with feedback, read with the route's `quality_metric`
  (gateway/capture/quality.py; "any" for routes without one); `rated` says how many calls that is;
- success: answered (status 200) and not judged bad (quality, when known, >= 0.5);
- cost per call: cost_usd summed over all the variant's calls (failures included) / calls;
- cost per successful call: the same sum / successes, what one good answer really costs;
- p50 latency: median latency_ms of the answered calls;
- escalated: the variant's calls that re-answered another variant's answer (`escalate`), whose
  cost (both answers) counts here.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.capture.quality import call_quality
from gateway.config.settings import Settings
from gateway.store.base import Store
from gateway.store.records import CallRecord, FeedbackRecord

_PAGE = 1000
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in "90", "15m", "1h", "2d", "1w"; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 90, 15m, 1h, 2d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """One variant over one window."""

    variant: str
    calls: int
    share: float
    rated: int
    quality: float | None
    successes: int
    errors: int
    cost_usd: float
    cost_per_call: float | None
    cost_per_success: float | None
    p50_latency_ms: float | None
    escalated: int = 0


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float
    calls: int
    variants: list[VariantFigures]


@dataclass(frozen=True, slots=True)
class RouteReport:
    route: str
    metric: str
    window_s: float
    windows: list[Window]  # oldest first
    total: Window  # the whole period


@dataclass(slots=True)
class _Acc:
    calls: int = 0
    rated: int = 0
    quality_sum: float = 0.0
    successes: int = 0
    errors: int = 0
    cost: float = 0.0
    latencies: list[float] = field(default_factory=list)
    escalated: int = 0

    def add(self, call: CallRecord, quality: float | None) -> None:
        self.calls += 1
        self.cost += call.cost_usd or 0.0
        self.escalated += call.escalation is not None
        if quality is not None:
            self.rated += 1
            self.quality_sum += quality
        if call.status != 200:
            self.errors += 1
            return
        self.latencies.append(call.latency_ms)
        if quality is None or quality >= 0.5:
            self.successes += 1

    def figures(self, variant: str, total: int) -> VariantFigures:
        return VariantFigures(
            variant=variant, calls=self.calls, share=self.calls / total if total else 0.0, rated=self.rated,
            quality=self.quality_sum / self.rated if self.rated else None, successes=self.successes,
            errors=self.errors, cost_usd=self.cost, cost_per_call=self.cost / self.calls if self.calls else None,
            cost_per_success=self.cost / self.successes if self.successes else None,
            p50_latency_ms=statistics.median(self.latencies) if self.latencies else None,
            escalated=self.escalated,
        )


def _window(start: float, end: float, accs: Mapping[str, _Acc], variants: Iterable[str]) -> Window:
    total = sum(a.calls for a in accs.values())
    names = list(dict.fromkeys((*variants, *sorted(accs))))
    return Window(start, end, total, [accs.get(v, _Acc()).figures(v, total) for v in names])


def build_report(
    route: str,
    calls: Iterable[CallRecord],
    feedback: Iterable[FeedbackRecord],
    *,
    start: float,
    end: float,
    window_s: float,
    metric: str = "any",
    variants: Iterable[str] = (),
) -> RouteReport:
    """The report over [start, end) in windows of `window_s` (the last one may be shorter); pure.

    `variants` (the route's configured ones) are listed even in windows where they served nothing.
    """
    by_call: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for fb in feedback:
        by_call[fb.call_id].append(fb)
    n = max(1, int((end - start) // window_s + (1 if (end - start) % window_s else 0)))
    per: list[dict[str, _Acc]] = [defaultdict(_Acc) for _ in range(n)]
    total: dict[str, _Acc] = defaultdict(_Acc)
    for c in calls:
        if c.endpoint != "chat" or not start <= c.created_at < end:
            continue
        q = call_quality(by_call.get(c.id, ()), metric)
        per[min(int((c.created_at - start) // window_s), n - 1)][c.variant].add(c, q)
        total[c.variant].add(c, q)
    names = list(variants)
    windows = [_window(start + i * window_s, min(end, start + (i + 1) * window_s), a, names) for i, a in enumerate(per)]
    return RouteReport(route, metric, window_s, windows, _window(start, end, total, names))


async def route_report(
    store: Store,
    route: str,
    *,
    window_s: float = 3600.0,
    windows: int = 24,
    metric: str = "any",
    variants: Iterable[str] = (),
    now: float | None = None,
    max_calls: int = 200_000,
) -> RouteReport:
    """The report of the last `windows` windows of `window_s` seconds ending now, from the store."""
    end = time.time() if now is None else now
    start = end - window_s * windows
    calls: list[CallRecord] = []
    while len(calls) < max_calls:
        page = await store.list_calls(route=route, since=start, until=end, limit=_PAGE, offset=len(calls))
        calls += page
        if len(page) < _PAGE:
            break
    feedback = await store.list_feedback(route=route, since=start)
    return build_report(route, calls, feedback, start=start, end=end, window_s=window_s, metric=metric,
                        variants=variants)


def route_metric(settings: Settings, route: str) -> str:
    """The quality metric a route's feedback is read with: its policy's `quality_metric`, else
    the learned policy's default ("rating") for learned routes and "any" for the others."""
    rs = settings.routes.get(route)
    if rs is None:
        return "any"
    metric = rs.policy.params().get("quality_metric")
    return str(metric) if metric else "rating" if rs.policy.kind == "learned" else "any"


def route_variants(settings: Settings, route: str) -> list[str]:
    """The route's configured variants (empty for a model used directly)."""
    rs = settings.routes.get(route)
    return [v.name for v in rs.variant_list()] if rs is not None else []


def _money(x: float | None) -> str:
    return "-" if x is None else f"${x:.6f}" if x < 0.01 else f"${x:.4f}"


def format_report(report: RouteReport) -> str:
    """A plain-text table: one block per window, one row per variant, then the whole period."""
    head = (f"{'variant':<16} {'calls':>6} {'share':>6} {'rated':>6} {'quality':>7} {'success':>7} "
            f"{'$/call':>10} {'$/success':>10} {'p50 ms':>8} {'escalated':>9}")
    lines = [f"route {report.route}: {len(report.windows)} windows of {report.window_s:g} s, "
             f"quality by {report.metric!r} feedback"]

    def block(title: str, w: Window) -> None:
        lines.append("")
        lines.append(f"{title} ({w.calls} calls)")
        lines.append(head)
        for v in w.variants:
            q = "-" if v.quality is None else f"{v.quality:.3f}"
            ok = "-" if not v.calls else f"{v.successes / v.calls:.1%}"
            p50 = "-" if v.p50_latency_ms is None else f"{v.p50_latency_ms:.1f}"
            lines.append(f"{v.variant:<16} {v.calls:>6} {v.share:>6.1%} {v.rated:>6} {q:>7} {ok:>7} "
                         f"{_money(v.cost_per_call):>10} {_money(v.cost_per_success):>10} {p50:>8} {v.escalated:>9}")

    for w in report.windows:
        if w.calls:
            block(f"{_clock(w.start)} → {_clock(w.end)}", w)
    block("whole period", report.total)
    return "\n".join(lines)


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
