"""Per-task results of `bench.generalize`: the acceptance checks, the summary table, markdown and charts."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.generalize.chart import COLOURS, trailing, write_curve
from bench.generalize.effects import Effects
from bench.generalize.gateway_pass import PassRun
from bench.generalize.oracle import OracleRun


@dataclass(frozen=True)
class TaskResult:
    """Everything measured for one task."""

    task: str
    shape: str
    off: PassRun
    on: PassRun
    oracle: OracleRun
    constant: tuple[str, float]  # the best constant answer and its accuracy over the stream
    fx: Effects
    window: int  # the "last window" size (the issue: 50)

    @property
    def n(self) -> int:
        return len(self.on.rows)

    @property
    def acc_off(self) -> float:
        return _acc(self.off.correct)

    @property
    def acc_on(self) -> float:
        return _acc(self.on.correct)

    @property
    def acc_last(self) -> float:
        return _acc(self.on.correct[-self.window:])

    @property
    def acc_oracle(self) -> float:
        return self.oracle.reused if self.oracle.reused is not None else _acc(self.oracle.correct)


def _acc(values: Sequence[bool]) -> float:
    return statistics.fmean(values) if values else 0.0


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def checks(r: TaskResult) -> list[tuple[str, bool | None]]:
    """The issue's acceptance checks for one task: (text, met?); None = not applicable."""
    gap = r.acc_oracle - r.acc_off
    out: list[tuple[str, bool | None]] = []
    gain = r.acc_on - r.acc_off
    out.append((f"on - off = {gain * 100:+.1f} pts (needs >= +20 where oracle - off = {gap * 100:+.1f} >= 25)",
                (gain >= 0.20) if gap >= 0.25 else None))
    out.append((f"last {r.window} = {r.acc_last:.3f} vs 90 % of oracle {0.9 * r.acc_oracle:.3f} and constant "
                f"{r.constant[1]:.3f}", r.acc_last >= 0.9 * r.acc_oracle and r.acc_last > r.constant[1]))
    after = r.fx.all_users_after
    out.append((f"first effect for all users {_f(after, '{:d}')} calls after the first correction (needs <= 50)",
                after is not None and after <= 50))
    d, q = r.fx.p50_learning_s, r.fx.p50_quiet_s
    out.append((f"live p50 during learning {_f(d, '{:.2f}')} s vs {_f(q, '{:.2f}')} s without, all calls "
                f"(mixes prompt lengths; not the verdict)", None))
    for label, (d, q) in (("plain-prompt (no index)", r.fx.p50_plain),
                          ("plain-prompt (index lookup, nothing retrieved)", r.fx.p50_missed),
                          ("learned-prompt", r.fx.p50_learned)):
        out.append((f"live p50 of {label} calls during learning {_f(d, '{:.2f}')} s vs {_f(q, '{:.2f}')} s "
                    f"without (needs <= +20 %)", None if d is None or q is None else d <= 1.2 * q))
    d, q = r.fx.p50_plain_vs_off
    out.append((f"live p50 of plain-prompt (no index) calls during learning {_f(d, '{:.2f}')} s vs "
                f"{_f(q, '{:.2f}')} s for the same items with learners off (paired; needs <= +20 %)",
                None if d is None or q is None else d <= 1.2 * q))
    d, q = r.fx.p50_learned_vs_idle
    out.append((f"live p50 of learned-prompt calls during learning {_f(d, '{:.2f}')} s vs {_f(q, '{:.2f}')} s "
                f"for the same prompts re-sent with learning idle ({len(r.on.resent)} pairs; needs <= +20 %)",
                None if d is None or q is None else d <= 1.2 * q))
    return out


HEADER = ("| task | shape | calls | off | on: pass / last {w} | oracle k=7 | best constant | "
          "all users (calls / s after 1st corr.) | quality rise (call / after) | served learned (acc vs plain) | "
          "eval calls (cached) / $ / cycle s | p50 s learning / quiet |\n|" + " --- |" * 12)


def row(r: TaskResult) -> str:
    """One summary-table row."""
    fx = r.fx
    return (f"| {r.task} | {r.shape} | {r.n} | {r.acc_off:.3f} | {r.acc_on:.3f} / {r.acc_last:.3f} | "
            f"{r.acc_oracle:.3f}{'*' if r.oracle.reused is not None else ''} | "
            f"{r.constant[1]:.3f} ({r.constant[0][:14]!r}) | "
            f"{_f(fx.all_users_after, '{:d}')} / {_f(fx.all_users_s, '{:.0f}')} | "
            f"{_f(fx.rise_call, '{:d}')} / {_f(fx.rise_after, '{:d}')} | "
            f"{fx.learned_share:.0%} ({_f(fx.acc_learned, '{:.2f}')} vs {_f(fx.acc_plain, '{:.2f}')}; "
            f"{fx.mean_retrieved:.1f} ex.) | {fx.eval_calls} ({fx.eval_cached}) / ${fx.eval_cost_usd:.5f} / "
            f"{fx.cycle_s:.0f} ({fx.cycles} cycles, {fx.loop_cycles} by the loop) | "
            f"{_f(fx.p50_learning_s, '{:.2f}')} / {_f(fx.p50_quiet_s, '{:.2f}')} |")


def table(results: Sequence[TaskResult]) -> str:
    """The summary table (markdown)."""
    w = results[0].window if results else 50
    return "\n".join([HEADER.format(w=w), *(row(r) for r in results)])


def chart(r: TaskResult, out_dir: Path, window: int = 25) -> Path:
    """The task's learning curve (trailing-window accuracy per call) as a PNG."""
    path = out_dir / f"generalize-{r.task}.png"
    # the oracle may run on an evenly spaced sample (--oracle-calls): stretch it back over the stream
    step = max(1, round(r.n / len(r.oracle.correct))) if r.oracle.correct else 1
    oracle = [v for v in trailing(r.oracle.correct, max(1, window // step)) for _ in range(step)][:r.n]
    series = {"learners off": trailing(r.off.correct, window), "oracle": oracle,
              "learners on": trailing(r.on.correct, window)}
    flat = {"best constant": r.constant[1]}
    if r.oracle.reused is not None:  # an earlier run's figure: a flat line
        del series["oracle"]
        flat["oracle"] = r.oracle.reused
    write_curve(path, r.n, series, flat, [c.after for c in r.on.cycles])
    return path


def legend(window: int = 25) -> str:
    """What the chart colours mean."""
    names = ", ".join(f"{k} = rgb{v}" for k, v in COLOURS.items())
    return (f"Charts: trailing {window}-call accuracy per call (y 0..1, gridlines every 0.25; x ticks every 50 "
            f"calls); {names} (vertical marks). Oracle figures marked * are an earlier run's (--oracle-figures).")
