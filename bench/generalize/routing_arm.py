"""The routing arm: learned routing between the cheap and the strong model vs. strong only.

Both routes learn (templates, indices) so the arms differ in routing alone; the routed route's
policy is `{ kind = "learned" }` with its documented defaults. Strong costs 10x cheap per token
(gateway_pass.PRICES). Goal (issue 17): >= 97 % of strong-only quality at <= 50 % of its cost.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.generalize.gateway_pass import Client, PassRun, run_pass
from bench.generalize.tasks import Task
from bench.real.bigbench import Item


@dataclass(frozen=True)
class RoutingResult:
    """Strong-only and learned-routing passes over the same stream."""

    task: str
    strong: PassRun
    routed: PassRun

    def figures(self, half: bool = False) -> tuple[float, float, float]:
        """(quality share of strong-only, cost share of strong-only, cheap share) over the pass or its 2nd half."""
        start = len(self.routed.rows) // 2 if half else 0
        rs, ss = self.routed.rows[start:], self.strong.rows[start:]
        q_strong = statistics.fmean(r.right for r in ss) if ss else 0.0
        q_routed = statistics.fmean(r.right for r in rs) if rs else 0.0
        c_strong, c_routed = sum(r.cost_usd for r in ss), sum(r.cost_usd for r in rs)
        cheap = sum(r.variant == "cheap" for r in rs) / len(rs) if rs else 0.0
        return (q_routed / q_strong if q_strong else 0.0, c_routed / c_strong if c_strong else 0.0, cheap)

    def lines(self) -> list[str]:
        """The arm's figures and its verdict, as printed."""
        def acc(run: PassRun) -> float:
            return statistics.fmean(r.right for r in run.rows) if run.rows else 0.0

        out = [f"routing on {self.task}, {len(self.routed.rows)} calls per arm: strong-only accuracy "
               f"{acc(self.strong):.3f} at ${sum(r.cost_usd for r in self.strong.rows):.6f}; learned routing "
               f"{acc(self.routed):.3f} at ${sum(r.cost_usd for r in self.routed.rows):.6f}"]
        for label, half in (("whole pass", False), ("second half", True)):
            q, c, cheap = self.figures(half)
            met = "MET" if q >= 0.97 and c <= 0.5 else "NOT MET"
            out.append(f"  {label}: {q:.1%} of strong-only quality at {c:.1%} of its cost, cheap share {cheap:.0%} "
                       f"(goal >= 97 % at <= 50 %): {met}")
        return out


def run_routing(client: Client, task: Task, stream: Sequence[Item], learn_every: int, seed: int) -> RoutingResult:
    """Stream the same items through `<task>-strong` and `<task>-routed`."""
    print(f"== routing arm on {task.name}: strong only", flush=True)
    strong = run_pass(client, task, f"{task.name}-strong", stream, learns=True, learn_every=learn_every, seed=seed)
    print(f"== routing arm on {task.name}: learned routing", flush=True)
    routed = run_pass(client, task, f"{task.name}-routed", stream, learns=True, learn_every=learn_every, seed=seed)
    return RoutingResult(task.name, strong, routed)
