"""Successive halving: spend the replay budget on the candidate arms that may still win.

A search (the index's retrieval settings, the template's trials) used to replay every arm on every
held-out case. Most arms lose clearly after a few cases, so: every arm is replayed on a small first
slice (`first` cases); an arm clearly worse than the best one there (paired on the same cases: its
mean difference exceeds `z` standard errors of the paired differences) is dropped; the survivors
are replayed on the next cases, the slice doubling, until the whole case set is reached (a lone
survivor goes there at once). An arm's result holds the cases it reached, so the gate
(learners/evaluate.py) judges a winner on every case and a dropped arm on its slice. Only clear
losers go: keeping the top half by mean on a few noisy cases drops a better arm often enough to
change the decision. Ties keep the order the arms were given (the simplest first), as the
searches expect.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from learners.dataset import EvalCase
from learners.evaluate import ArmResult, CaseResult

Replay = Callable[[str, Sequence[EvalCase]], Awaitable[ArmResult]]  # (arm label, cases) -> results
Z = 2.0  # standard errors a paired difference must exceed for "clearly worse"


@dataclass(frozen=True, slots=True)
class Rung:
    """One rung: how many cases the arms had reached, which were replayed, which were dropped."""

    cases: int
    arms: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(slots=True)
class Halving:
    """The result of one search: each arm's replays, the rungs, and the replays it avoided."""

    results: dict[str, ArmResult] = field(default_factory=dict)
    rungs: list[Rung] = field(default_factory=list)
    saved: int = 0  # case replays a full evaluation of every arm would have made on top

    @property
    def survivors(self) -> tuple[str, ...]:
        """The arms still standing after the last rung."""
        return self.rungs[-1].arms if self.rungs else ()

    def describe(self) -> str:
        """`13 cases: 5 arms (dropped k3); 26 cases: 2 arms` for a report."""
        return "; ".join(f"{r.cases} cases: {len(r.arms)} arms" + (f" (dropped {', '.join(r.dropped)})"
                                                                   if r.dropped else "") for r in self.rungs)


def first_slice(n_cases: int, min_samples: int) -> int:
    """The first rung's size: an eighth of the cases, at least `min_samples` (what the gate needs)."""
    return min(n_cases, max(min_samples, math.ceil(n_cases / 8)))


def clearly_worse(best: Sequence[CaseResult], arm: Sequence[CaseResult], z: float = Z) -> bool:
    """True when `arm` trails `best` on their shared cases by more than `z` paired standard errors
    (a constant lead counts: it has no spread)."""
    mine = {r.call_id: r.score for r in arm}
    diffs = [b.score - mine[b.call_id] for b in best if b.call_id in mine]
    if len(diffs) < 2:
        return False
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean > 0 and mean > z * math.sqrt(var / len(diffs))


def _merge(a: ArmResult | None, b: ArmResult) -> ArmResult:
    return b if a is None else ArmResult(a.results + b.results, a.complete and b.complete)


async def successive_halving(labels: Sequence[str], replay: Replay, cases: Sequence[EvalCase], *,
                             first: int, z: float = Z) -> Halving:
    """Replay the arms `labels` on growing slices of `cases`, dropping clear losers (module docstring).

    An arm whose replay came back incomplete (the budget ran out) stops there with what it has."""
    out = Halving()
    alive = list(dict.fromkeys(labels))
    reached = 0
    size = max(1, min(first, len(cases)))
    while alive and reached < len(cases):
        chunk = cases[reached:size]
        for label in alive:
            out.results[label] = _merge(out.results.get(label), await replay(label, chunk))
        reached = size
        scored = [a for a in alive if out.results[a].results]
        if not scored:
            out.rungs.append(Rung(reached, tuple(alive), ()))
            break
        best = max(scored, key=lambda a: out.results[a].mean)  # max keeps the first of equals
        keep = [a for a in scored if a == best or not clearly_worse(out.results[best].results,
                                                                     out.results[a].results, z)]
        keep = [a for a in keep if out.results[a].complete]
        out.rungs.append(Rung(reached, tuple(alive), tuple(a for a in alive if a not in keep)))
        alive = keep
        # a lone survivor goes straight to every case: the gate judges it on all of them
        size = len(cases) if len(alive) == 1 else min(len(cases), 2 * size)
    out.saved = sum(len(cases) - len(r.results) for r in out.results.values() if r.complete)
    return out
