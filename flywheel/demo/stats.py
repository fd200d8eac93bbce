"""What the demo measures: one outcome per call, figures per window of calls, events of learning."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BARS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True, slots=True)
class CallOutcome:
    n: int
    call_id: str
    right: bool
    feedback: str  # "up", "down" or "correction"
    cost_usd: float
    latency_s: float
    repeat: bool = False  # the same question was asked before in this demo
    baseline_right: bool = False  # the same model asked directly (nothing learned) got it right


@dataclass(frozen=True, slots=True)
class Serving:
    """What the route serves: current and canary versions of its template and example index."""

    template: str | None = None
    template_canary: str | None = None
    index: str | None = None
    index_canary: str | None = None
    canary_share: float = 0.0

    def versions(self) -> str:
        return f"{self.template or '-'} / {self.index or '-'}"

    def canary(self) -> str:
        live = [v for v in (self.template_canary, self.index_canary) if v]
        return f"{', '.join(live)} at {self.canary_share:.0%}" if live else "-"


@dataclass(frozen=True, slots=True)
class WindowStats:
    first: int  # call numbers, 1-based, inclusive
    last: int
    accuracy: float
    baseline: float  # accuracy of the same model asked directly, without what the route learned
    cost_per_call_usd: float
    p50_latency_s: float
    corrections: int
    repeats: float  # share of the window's questions asked before
    serving: Serving


@dataclass(frozen=True, slots=True)
class LearnEvent:
    """One POST /admin/learn: what it decided, in short lines."""

    at_call: int
    duration_s: float
    examples: int
    lines: tuple[str, ...]
    promoted: tuple[str, ...] = ()


@dataclass(slots=True)
class DemoResult:
    windows: list[WindowStats] = field(default_factory=list)
    events: list[LearnEvent] = field(default_factory=list)
    wall_s: float = 0.0
    final: Serving = field(default_factory=Serving)  # what the route serves when the demo ends

    @property
    def first_accuracy(self) -> float:
        return self.windows[0].accuracy if self.windows else 0.0

    @property
    def last_accuracy(self) -> float:
        return self.windows[-1].accuracy if self.windows else 0.0

    @property
    def first_baseline(self) -> float:
        return self.windows[0].baseline if self.windows else 0.0

    @property
    def last_baseline(self) -> float:
        return self.windows[-1].baseline if self.windows else 0.0

    @property
    def promoted(self) -> tuple[str, ...]:
        return tuple(v for e in self.events for v in e.promoted)


def window_stats(outcomes: Sequence[CallOutcome], serving: Serving) -> WindowStats:
    """Figures for one window of calls (at least one)."""
    n = len(outcomes)
    return WindowStats(
        first=outcomes[0].n, last=outcomes[-1].n,
        accuracy=sum(o.right for o in outcomes) / n,
        baseline=sum(o.baseline_right for o in outcomes) / n,
        cost_per_call_usd=sum(o.cost_usd for o in outcomes) / n,
        p50_latency_s=statistics.median(o.latency_s for o in outcomes),
        corrections=sum(o.feedback == "correction" for o in outcomes),
        repeats=sum(o.repeat for o in outcomes) / n,
        serving=serving,
    )


def sparkline(values: Sequence[float]) -> str:
    """One block character per value in [0, 1]."""
    return "".join(BARS[min(len(BARS) - 1, max(0, round(v * (len(BARS) - 1))))] for v in values)


def learn_event(at_call: int, report: dict[str, Any]) -> LearnEvent:
    """Summarise a LearnReport (the JSON of POST /admin/learn)."""
    lines: list[str] = []
    promoted: list[str] = []
    for d in report.get("rollout") or []:
        if d.get("action") == "waiting":
            continue
        lines.append(f"{d['kind']} {d['version']} {d['action']}: {d['reason']}")
        if d.get("action") == "promoted":
            promoted.append(str(d["version"]))
    for c in report.get("candidates") or []:
        lines.append(f"{c['kind']} {c['version']} -> {c['outcome']}: {c['reason']}")
        if c.get("outcome") == "promoted":
            promoted.append(str(c["version"]))
    return LearnEvent(at_call, float(report.get("duration_s") or 0.0), int(report.get("examples") or 0),
                      tuple(lines), tuple(promoted))
