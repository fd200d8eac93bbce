"""The demo in the terminal: a live table of windows with an accuracy sparkline, or plain lines.

`LiveView` redraws (rich `Live`) after every call: one row per window of calls (accuracy with a
bar, cost per call, median latency, the template / index versions serving it and any canary),
the accuracy sparkline so far, and the latest learning decisions. `PlainView` (`--no-live`)
prints the same rows and decisions as lines as they happen. Both end with the summary: first vs
last window accuracy and the commands that show what was learned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from flywheel.demo.config import ROUTE
from flywheel.demo.runner import DemoInfo
from flywheel.demo.stats import CallOutcome, DemoResult, LearnEvent, WindowStats, sparkline

BAR_WIDTH = 20
EVENTS_SHOWN = 6


def _bar(value: float, width: int = BAR_WIDTH) -> Text:
    full = round(value * width)
    colour = "green" if value >= 0.75 else "yellow" if value >= 0.5 else "red"
    return Text("█" * full, style=colour) + Text("·" * (width - full), style="dim")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def header(info: DemoInfo) -> Text:
    """What runs: route, data, upstream, embedder, how learning is driven."""
    o = info.options
    return Text.from_markup(
        f"[bold]flywheel demo[/]: route [cyan]{ROUTE}[/] learns to name the intent of a request\n"
        f"data: {info.utterances} SNIPS utterances, {len(info.intents)} intents, seed {o.seed} | "
        "upstream: simulated, no API key\n"
        f"embedder: [bold]{info.embedder}[/] | learning: POST /admin/learn every {o.learn_every} calls\n"
        f"users: {o.calls} calls; right -> rating 1, wrong -> correction ({o.correct_share:.0%}) or rating -1\n"
        f"gateway: {info.url} | store and config: {_shown(info.files.directory)}/")


WIDE = 110  # narrower consoles get the compact table (wider ones too when the full one does not fit)


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    short: str  # header in the compact table; "" leaves the column out there
    justify: Literal["left", "right"]
    cell: Callable[[WindowStats, int], str | Text]  # (window, bar width) -> cell


COLUMNS: tuple[Column, ...] = (
    Column("calls", "calls", "right", lambda w, _: f"{w.first}-{w.last}"),
    Column("accuracy", "acc", "right", lambda w, _: f"{w.accuracy:.0%}"),
    Column("", " ", "left", lambda w, bar: _bar(w.accuracy, bar)),
    Column("no learning", "base", "right", lambda w, _: f"{w.baseline:.0%}"),
    Column("$/1k calls", "$/1k", "right", lambda w, _: f"{w.cost_per_call_usd * 1000:.3f}"),
    Column("p50 ms", "p50", "right", lambda w, _: f"{w.p50_latency_s * 1000:.0f}"),
    Column("asked before", "", "right", lambda w, _: f"{w.repeats:.0%}"),
    Column("corrections", "", "right", lambda w, _: str(w.corrections)),
    Column("template / index", "t / i", "left", lambda w, _: w.serving.versions()),
    Column("canary", "canary", "left", lambda w, _: w.serving.canary()),
)


def _table(windows: list[WindowStats], wide: bool) -> Table:
    bar = BAR_WIDTH if wide else BAR_WIDTH // 2
    columns = [(c, c.header if wide else c.short) for c in COLUMNS if wide or c.short]
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column, title in columns:
        table.add_column(title.strip(), justify=column.justify, no_wrap=True)
    for w in windows:
        table.add_row(*(column.cell(w, bar) for column, _ in columns))
    return table


def window_table(windows: list[WindowStats], width: int = WIDE) -> Table:
    """The windows so far; the full table only where it fits whole (rich would cut its headers to
    squeeze it in), else fewer columns with short headers."""
    if width >= WIDE:
        table = _table(windows, wide=True)
        console = Console(width=max(width, 1000))
        if Measurement.get(console, console.options, table).maximum <= width:
            return table
    return _table(windows, wide=False)


def window_line(w: WindowStats) -> str:
    """One window as a plain line."""
    return (f"calls {w.first:>4}-{w.last:<4} accuracy {w.accuracy:4.0%} (no learning {w.baseline:4.0%})  "
            f"$/1k calls {w.cost_per_call_usd * 1000:.4f}  p50 {w.p50_latency_s * 1000:3.0f} ms  "
            f"asked before {w.repeats:4.0%}  serving {w.serving.versions()}  canary {w.serving.canary()}")


def event_lines(event: LearnEvent) -> list[Text]:
    head = Text(f"after call {event.at_call}: learned in {event.duration_s:.1f}s from {event.examples} examples",
                style="bold")
    out = [head]
    for line in event.lines or ("nothing to decide yet",):
        style = ("green" if " promoted" in line or "-> promoted" in line
                 else "red" if "rolled_back" in line or "rejected" in line
                 else "yellow" if "canary" in line.split(":")[0] else "dim")
        out.append(Text(f"  {line}", style=style, overflow="ellipsis", no_wrap=True))
    return out


def inspect_commands(config: str, result: DemoResult) -> list[str]:
    """The `flywheel prompts` commands that show the history and what is served now."""
    base = f"flywheel --config {config} prompts"
    out = [f"{base} log {ROUTE}"]
    template, index = result.final.template, result.final.index
    out.append(f"{base} diff {ROUTE} t0 {template}" if template and template != "t0" else f"{base} diff {ROUTE}")
    # VERSION before --kind: argparse cannot take `nargs="*"` positionals after an option
    out.append(f"{base} diff {ROUTE} {index} --kind index" if index else f"{base} diff {ROUTE} --kind index")
    return out


def summary(info: DemoInfo, result: DemoResult) -> RenderableType:
    """First vs last window, the curve, and how to inspect what was learned."""
    first, last = result.first_accuracy, result.last_accuracy
    cfg = _shown(info.files.config)
    gain = (last - first) * 100
    promoted = ", ".join(result.promoted) or "none"
    return Group(
        Text.from_markup(f"\n[bold]accuracy[/]: first window {first:.0%} -> last window {last:.0%} "
                         f"([{'green' if gain > 0 else 'red'}]{gain:+.0f} points[/]) in {result.wall_s:.0f}s"),
        Text(f"the same questions without learning: {result.first_baseline:.0%} -> {result.last_baseline:.0%} "
             "(the model asked directly)"),
        Text(f"curve:    {sparkline([w.accuracy for w in result.windows])}"),
        Text(f"promoted: {promoted}"),
        Text.from_markup("\n[bold]What was learned[/] (the store is kept):"),
        *(Text(f"  {c}") for c in inspect_commands(cfg, result)),
    )


class PlainView:
    """Prints rows and decisions as lines (`--no-live`, logs, CI)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(soft_wrap=True)
        self.info: DemoInfo | None = None

    def started(self, info: DemoInfo) -> None:
        self.info = info
        self.console.print(header(info))

    def called(self, outcome: CallOutcome) -> None:
        return None

    def window(self, stats: WindowStats) -> None:
        self.console.print(window_line(stats), highlight=False)

    def learned(self, event: LearnEvent) -> None:
        for line in event_lines(event):
            self.console.print(line)

    def finished(self, result: DemoResult) -> None:
        assert self.info is not None
        self.console.print(summary(self.info, result))


class LiveView:
    """Redraws the whole picture in place as calls come in."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.info: DemoInfo | None = None
        self.windows: list[WindowStats] = []
        self.events: list[Text] = []
        self.calls = 0
        self.right = 0
        self._live = Live(console=self.console, refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._live.__exit__(kind, exc, tb)

    def _render(self) -> RenderableType:
        assert self.info is not None
        total = self.info.options.calls
        curve = sparkline([w.accuracy for w in self.windows])
        status = Text(f"call {self.calls}/{total}   accuracy so far {self.right / max(1, self.calls):.0%}   "
                      f"curve {curve}", style="bold")
        return Group(header(self.info), Text(""), window_table(self.windows, self.console.width), Text(""), status,
                     *self.events[-EVENTS_SHOWN:])

    def started(self, info: DemoInfo) -> None:
        self.info = info
        self._live.update(self._render())

    def called(self, outcome: CallOutcome) -> None:
        self.calls = outcome.n
        self.right += outcome.right
        self._live.update(self._render())

    def window(self, stats: WindowStats) -> None:
        self.windows.append(stats)
        self._live.update(self._render())

    def learned(self, event: LearnEvent) -> None:
        self.events += event_lines(event)
        self._live.update(self._render())

    def finished(self, result: DemoResult) -> None:
        assert self.info is not None
        self._live.update(Group(self._render(), summary(self.info, result)))
