"""What one learning pass achieved and when: pure figures over a `PassRun` (no I/O).

- first effect for all users: the first call sent after a learned template or index was
  *promoted* (the artifact log's `promoted` transition), counted from the first correction;
- first quality rise: the first call at which the trailing `window` calls' accuracy is at least
  `rise` above the learners-off accuracy over the whole pass;
- evaluation spend: the sums of the eval_* fields of the /admin/learn answers and of the loop's own
  cycles (bench/generalize/cycle_log.py);
- live latency: p50 of calls sent while a learning cycle (any route's) ran vs. of the others, and
  like for like: plain-prompt calls paired with the learners-off pass, learned-prompt calls paired
  with their prompts re-sent once learning was idle (bench/generalize/resend.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.generalize.gateway_pass import CallRow, PassRun

LEARNED_KINDS = ("template", "index")
MIN_CALLS = 10  # a p50 of fewer calls is not shown (a handful of quiet calls at a pass's start is noise)


@dataclass(frozen=True)
class Effects:
    """The timing and cost figures of one learners-on pass (call numbers are 1-based)."""

    first_correction: int | None
    all_users_call: int | None
    all_users_after: int | None  # calls after the first correction
    all_users_s: float | None  # seconds after the first correction
    rise_call: int | None
    rise_after: int | None
    rise_s: float | None
    learned_share: float  # calls served with a learned template or at least one retrieved example
    acc_learned: float | None  # accuracy of those calls
    acc_plain: float | None  # accuracy of the others
    mean_retrieved: float
    cycles: int
    loop_cycles: int  # of which the background loop ran on its own (not POST /admin/learn)
    cycle_s: float  # wall time of all learning cycles
    eval_calls: int
    eval_cached: int
    eval_cost_usd: float
    outcomes: str  # e.g. "index: 2 promoted, 1 rejected; template: 3 rejected"
    p50_learning_s: float | None
    p50_quiet_s: float | None
    # like for like: p50 (during learning, quiet) of calls with a plain prompt and no index to
    # look up, of plain-prompt calls whose index lookup retrieved nothing (they embed the query
    # first), and of those carrying learned examples or a learned template (longer prompts:
    # slower on a CPU model)
    p50_plain: tuple[float | None, float | None] = (None, None)
    p50_missed: tuple[float | None, float | None] = (None, None)
    p50_learned: tuple[float | None, float | None] = (None, None)
    # paired: plain-prompt calls during learning, and the learners-off pass on the same items (the
    # same prompt, answered the same way at temperature 0): no item or position bias
    p50_plain_vs_off: tuple[float | None, float | None] = (None, None)
    # paired: learned-prompt calls during learning, and their stored prompts re-sent with learning
    # idle after the pass (bench/generalize/resend.py)
    p50_learned_vs_idle: tuple[float | None, float | None] = (None, None)


def learned(row: CallRow) -> bool:
    """The call carried a learned template or at least one retrieved example."""
    return (row.template_version not in (None, "t0")) or row.retrieved > 0


def _mean(values: Sequence[bool]) -> float | None:
    return statistics.fmean(values) if values else None


def first_promotion(run: PassRun) -> float | None:
    """When a learned template or index was first promoted (to every user), from the artifact log."""
    start = run.rows[0].sent_at if run.rows else 0.0
    times = [float(e["at"]) for e in run.log
             if e.get("to_state") == "promoted" and e.get("kind") in LEARNED_KINDS and float(e["at"]) >= start]
    return min(times) if times else None


def rise_call(correct: Sequence[bool], baseline: float, window: int, rise: float) -> int | None:
    """First call number whose trailing `window` accuracy is >= baseline + rise."""
    for i in range(window, len(correct) + 1):
        if statistics.fmean(correct[i - window:i]) >= baseline + rise:
            return i
    return None


def outcome_counts(run: PassRun) -> str:
    """Candidates per kind and outcome over all cycles, plus rollout decisions."""
    counts: dict[str, dict[str, int]] = {}
    for c in run.cycles:
        for cand in c.report.get("candidates", []):
            k = counts.setdefault(str(cand.get("kind")), {})
            k[str(cand.get("outcome"))] = k.get(str(cand.get("outcome")), 0) + 1
        for d in c.report.get("rollout", []) or []:
            k = counts.setdefault(str(d.get("kind")), {})
            key = f"rollout {d.get('action')}"
            k[key] = k.get(key, 0) + 1
    return "; ".join(f"{kind}: " + ", ".join(f"{n} {o}" for o, n in sorted(v.items()))
                     for kind, v in sorted(counts.items())) or "no candidate"


def effects(run: PassRun, off_accuracy: float, window: int = 25, rise: float = 0.10,
            off: PassRun | None = None) -> Effects:
    """All figures of a learners-on pass, given the learners-off accuracy over the same stream (and
    that pass itself, `off`, for the paired latency figure)."""
    rows = run.rows
    corr = next((i for i, r in enumerate(rows) if r.feedback == "correction"), None)
    promo = first_promotion(run)
    all_call = next((i for i, r in enumerate(rows) if promo is not None and r.sent_at >= promo), None)
    rc = rise_call([r.right for r in rows], off_accuracy, window, rise)
    t_corr = rows[corr].sent_at + rows[corr].latency_s if corr is not None else None
    taught = [r for r in rows if learned(r)]
    plain = [r for r in rows if not learned(r)]
    missed = [r for r in plain if r.index_version is not None]
    during = [r.latency_s for r in rows if r.during_learning]
    quiet = [r.latency_s for r in rows if not r.during_learning]

    def p50s(rs: Sequence[CallRow]) -> tuple[float | None, float | None]:
        d, q = [r.latency_s for r in rs if r.during_learning], [r.latency_s for r in rs if not r.during_learning]
        return (statistics.median(d) if len(d) >= MIN_CALLS else None,
                statistics.median(q) if len(q) >= MIN_CALLS else None)

    paired = [i for i, r in enumerate(rows[:len(off.rows)])
              if r.during_learning and not learned(r) and r.index_version is None] if off is not None else []
    reps = [c.report for c in run.cycles]
    return Effects(
        first_correction=None if corr is None else corr + 1,
        all_users_call=None if all_call is None else all_call + 1,
        all_users_after=None if all_call is None or corr is None else all_call - corr,
        all_users_s=None if promo is None or t_corr is None else max(0.0, promo - t_corr),
        rise_call=rc,
        rise_after=None if rc is None or corr is None else rc - (corr + 1),
        rise_s=None if rc is None or t_corr is None else max(0.0, rows[rc - 1].sent_at - t_corr),
        learned_share=len(taught) / len(rows) if rows else 0.0,
        acc_learned=_mean([r.right for r in taught]),
        acc_plain=_mean([r.right for r in plain]),
        mean_retrieved=statistics.fmean([r.retrieved for r in rows]) if rows else 0.0,
        cycles=len(run.cycles),
        loop_cycles=sum(1 for r in reps if r.get("source") == "loop"),
        cycle_s=sum(c.ended - c.started for c in run.cycles),
        eval_calls=sum(int(r.get("eval_calls", 0) or 0) for r in reps),
        eval_cached=sum(int(r.get("eval_cached", 0) or 0) for r in reps),
        eval_cost_usd=sum(float(r.get("eval_cost_usd", 0.0) or 0.0) for r in reps),
        outcomes=outcome_counts(run),
        p50_learning_s=statistics.median(during) if during else None,
        p50_quiet_s=statistics.median(quiet) if quiet else None,
        p50_plain=p50s([r for r in plain if r.index_version is None]),
        p50_missed=p50s(missed),
        p50_learned=p50s(taught),
        p50_plain_vs_off=(statistics.median(rows[i].latency_s for i in paired),
                          statistics.median(off.rows[i].latency_s for i in paired))
        if paired and off is not None else (None, None),
        p50_learned_vs_idle=(statistics.median(rows[i].latency_s for i in run.resent),
                             statistics.median(run.resent.values())) if run.resent else (None, None),
    )
