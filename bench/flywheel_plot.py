"""Figures for bench/flywheel.py: per-window summaries, a markdown table and a PNG learning curve.

Pure helpers over `ArmRun` results; matplotlib is imported only inside `write_chart`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ArmRun:
    """Every call of one arm (a way of serving the stream), in stream order."""

    name: str
    correct: list[bool] = field(default_factory=list)
    cost_usd: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)
    learn_s: float = 0.0  # wall time spent in POST /admin/learn (evaluation replays included)
    eval_calls: int = 0  # upstream calls the learning cycles made to evaluate candidates
    eval_cost_usd: float = 0.0

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.correct) if self.correct else 0.0

    @property
    def cost_per_call(self) -> float:
        return statistics.fmean(self.cost_usd) if self.cost_usd else 0.0

    @property
    def p50_s(self) -> float:
        return statistics.median(self.latency_s) if self.latency_s else 0.0


@dataclass(frozen=True)
class Window:
    """Figures of one arm over calls [start, end)."""

    end: int
    accuracy: float
    cost_per_call: float
    p50_s: float
    cheap_share: float


def windows(run: ArmRun, size: int, cheap: str = "cheap") -> list[Window]:
    """Consecutive windows of `size` calls (the last one may be shorter)."""
    out = []
    for start in range(0, run.n, size):
        sl = slice(start, min(run.n, start + size))
        out.append(Window(sl.stop, statistics.fmean(run.correct[sl]), statistics.fmean(run.cost_usd[sl]),
                          statistics.median(run.latency_s[sl]),
                          statistics.fmean(v == cheap for v in run.variant[sl])))
    return out


def window_table(runs: Sequence[ArmRun], size: int) -> str:
    """A markdown table: one row per window, accuracy / $ per call / p50 per arm."""
    per = {r.name: windows(r, size) for r in runs}
    head = "| calls | " + " | ".join(f"{r.name} acc | {r.name} $/call | {r.name} p50 s" for r in runs) + " |"
    sep = "|---:|" + "---:|---:|---:|" * len(runs)
    rows = [head, sep]
    for i in range(max(len(w) for w in per.values())):
        cells = []
        end = 0
        for r in runs:
            w = per[r.name][i] if i < len(per[r.name]) else None
            if w is None:
                cells.append(" | | ")
                continue
            end = max(end, w.end)
            cells.append(f"{w.accuracy:.1%} | {w.cost_per_call * 1e6:.2f}µ | {w.p50_s:.2f}")
        rows.append(f"| {end} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def totals_table(runs: Sequence[ArmRun]) -> str:
    """A markdown table of whole-run figures per arm."""
    rows = ["| arm | calls | accuracy | $/call | total $ | p50 s | learn s | eval calls | eval $ |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        rows.append(f"| {r.name} | {r.n} | {r.accuracy:.1%} | {r.cost_per_call * 1e6:.2f}µ | "
                    f"{sum(r.cost_usd):.6f} | {r.p50_s:.2f} | {r.learn_s:.0f} | {r.eval_calls} | "
                    f"{r.eval_cost_usd:.6f} |")
    return "\n".join(rows)


def write_chart(runs: Sequence[ArmRun], size: int, path: Path, title: str) -> None:
    """Accuracy (top) and cost per call (bottom) per window, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_cost) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for r in runs:
        ws = windows(r, size)
        xs = [w.end for w in ws]
        ax_acc.plot(xs, [w.accuracy * 100 for w in ws], marker="o", label=r.name)
        ax_cost.plot(xs, [w.cost_per_call * 1e6 for w in ws], marker="o", label=r.name)
    ax_acc.set_ylabel(f"accuracy per {size}-call window (%)")
    ax_acc.set_ylim(0, 100)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    ax_cost.set_ylabel("cost per call (µ$)")
    ax_cost.set_xlabel("calls")
    ax_cost.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
