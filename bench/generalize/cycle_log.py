"""The learning loop's own cycles, read back from the gateway's log and merged into a pass.

With `[learners] enabled = true` the gateway also learns on its own schedule (interval_s, min_new_feedback,
learn_on_correction), beside the bench's POST /admin/learn calls. Those cycles answer no request, so their
timing and evaluation spend come from the log line every cycle writes (learners/loop.py):
`route R: cycle 12.3s; evaluation N calls, C cached, S skipped, H saved by halving, $X`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.generalize.gateway_pass import LearnCycle, PassRun

LINE = re.compile(r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) .*route (?P<route>\S+): cycle "
                  r"(?P<s>[\d.]+)s; evaluation (?P<calls>\d+) calls, (?P<cached>\d+) cached.*\$(?P<cost>[\d.]+)")
# an /admin/learn answer and its log line end within this many seconds of each other
MATCH_S = 3.0


@dataclass(frozen=True)
class LoggedCycle:
    """One learning cycle as the gateway logged it (times are time.time())."""

    route: str
    started: float
    ended: float
    eval_calls: int
    eval_cached: int
    eval_cost_usd: float


def read_cycles(log_path: Path) -> list[LoggedCycle]:
    """Every cycle line of the gateway log (the log's timestamps are local time, as logging writes them)."""
    out: list[LoggedCycle] = []
    if not log_path.exists():
        return out
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        ended = time.mktime(time.strptime(m["at"], "%Y-%m-%d %H:%M:%S")) + int(m["ms"]) / 1000
        out.append(LoggedCycle(m["route"], ended - float(m["s"]), ended, int(m["calls"]), int(m["cached"]),
                               float(m["cost"])))
    return out


def merge_loop_cycles(run: PassRun, cycles: list[LoggedCycle]) -> int:
    """Add the loop's cycles of `run.route` that overlap the pass to `run.cycles` (report `{"source": "loop"}`),
    and mark calls that overlapped any route's cycle (the upstream is shared) as sent during learning.
    Returns how many loop cycles were added."""
    if not run.rows:
        return 0
    start, end = run.rows[0].sent_at, max(r.sent_at + r.latency_s for r in run.rows)
    live = [c for c in cycles if c.ended >= start and c.started <= end]
    for row in run.rows:
        if any(c.started <= row.sent_at + row.latency_s and c.ended >= row.sent_at for c in live):
            row.during_learning = True
    added = 0
    for c in live:
        if c.route != run.route or any(abs(a.ended - c.ended) <= MATCH_S for a in run.cycles):
            continue  # another route's, or one of the bench's own /admin/learn cycles
        after = sum(1 for r in run.rows if r.sent_at < c.started)
        run.cycles.append(LearnCycle(after, c.started, c.ended, {
            "source": "loop", "eval_calls": c.eval_calls, "eval_cached": c.eval_cached,
            "eval_cost_usd": c.eval_cost_usd}))
        added += 1
    run.cycles.sort(key=lambda x: x.started)
    return added
