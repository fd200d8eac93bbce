"""Simulated traffic for the learned router: learning curve, drift, and decision cost.

Run from the repository root:  python -m bench.routing_sim [--requests 6000] [--seed 7]

World: requests come from topic clusters in a 32-dim embedding space; a third of the clusters
are "hard". The cheap model answers easy requests well (P(ok)=0.94) and hard ones badly (0.15);
the strong model is good everywhere (0.95) and costs 20x more. Feedback (quality 1/0, drawn from
those probabilities) reaches the policy `--delay` requests after the call. The learned router
runs in quality-floor mode (cheapest variant predicted >= 75% of the best) with 5% exploration.
Prints figures only.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import timeit
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import Features, LearnedPolicy, Policy, StaticPolicy, WeightedPolicy

EMBED_DIM = 32
WINDOW = 200
CHEAP, STRONG = "cheap", "strong"
PRICE = {CHEAP: 1.0, STRONG: 20.0}


@dataclass(frozen=True)
class Request:
    features: Features
    hard: bool


class World:
    """Seeded request generator and outcome model."""

    def __init__(self, seed: int, n_clusters: int = 12, hard_share: float = 1 / 3) -> None:
        self.rng = np.random.default_rng(seed)
        centres = self.rng.standard_normal((n_clusters, EMBED_DIM))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        n_hard = round(n_clusters * hard_share)
        self.hard = np.zeros(n_clusters, dtype=bool)
        self.hard[self.rng.choice(n_clusters, n_hard, replace=False)] = True
        self.p_ok = {CHEAP: (0.94, 0.15), STRONG: (0.95, 0.95)}  # (easy, hard)

    def request(self) -> Request:
        c = int(self.rng.integers(len(self.centres)))
        e = self.centres[c] + self.rng.standard_normal(EMBED_DIM) * (0.35 / np.sqrt(EMBED_DIM))
        chars = int(self.rng.lognormal(6.5, 0.8))
        f = Features(
            route="support-bot",
            user=None,
            key_id=None,
            prompt_chars=chars,
            n_messages=1 + int(self.rng.integers(4)),
            has_tools=bool(self.rng.random() < 0.2),
            embedding=e.astype(np.float32),
        )
        return Request(f, bool(self.hard[c]))

    def outcome(self, req: Request, variant: str) -> tuple[float, float]:
        """(quality 1/0, cost) of serving `req` with `variant`; cost scales with prompt length."""
        p = self.p_ok[variant][1 if req.hard else 0]
        quality = 1.0 if self.rng.random() < p else 0.0
        cost = PRICE[variant] * (req.features.prompt_chars + 500) / 1000
        return quality, cost


@dataclass
class Run:
    quality: list[float]
    cost: list[float]
    variant: list[str]
    decide_ns: list[int]
    update_ns: list[int]


def simulate(
    policy: Policy, n: int, seed: int, delay: int, drift_at: int | None = None, drift_p: float = 0.3
) -> Run:
    """Serve `n` requests; feed outcomes back after `delay` requests when the policy learns."""
    world = World(seed)
    learner = policy if isinstance(policy, LearnedPolicy) else None
    pending: deque[tuple[int, Features, str, float, float]] = deque()
    run = Run([], [], [], [], [])
    for t in range(n):
        if drift_at is not None and t == drift_at:
            world.p_ok[CHEAP] = (drift_p, world.p_ok[CHEAP][1])  # the cheap model degrades
        req = world.request()
        t0 = time.thread_time_ns()
        d = policy.choose(req.features)
        run.decide_ns.append(time.thread_time_ns() - t0)
        q, c = world.outcome(req, d.variant)
        run.quality.append(q)
        run.cost.append(c)
        run.variant.append(d.variant)
        if learner is not None:
            pending.append((t + delay, req.features, d.variant, q, c))
            while pending and pending[0][0] <= t:
                _, f, v, q0, c0 = pending.popleft()
                t1 = time.thread_time_ns()
                learner.update(f, v, q0, c0)
                run.update_ns.append(time.thread_time_ns() - t1)
    return run


def learned(seed: int, decay: float = 0.001, drift_alarm: float | None = 0.25) -> LearnedPolicy:
    """The learned router as the bench configures it: quality floor 75% of the best variant."""
    return LearnedPolicy(
        [CHEAP, STRONG],
        fallbacks=[STRONG],
        min_quality=0.75,
        explore=0.05,
        decay=decay,
        drift_alarm=drift_alarm,
        prior_quality={STRONG: 0.9, CHEAP: 0.6},
        prior_cost=PRICE,
        rng=random.Random(seed),
    )


def window_means(xs: list[float], size: int = WINDOW) -> list[float]:
    return [statistics.fmean(xs[i : i + size]) for i in range(0, len(xs), size)]


def print_curves(runs: dict[str, Run]) -> None:
    names = list(runs)
    print(f"{'requests':>9} " + " ".join(f"{n + ' q':>12} {'cost':>6}" for n in names))
    qs = {n: window_means(r.quality) for n, r in runs.items()}
    cs = {n: window_means(r.cost) for n, r in runs.items()}
    for w in range(len(qs[names[0]])):
        cells = " ".join(f"{qs[n][w]:>12.3f} {cs[n][w]:>6.2f}" for n in names)
        print(f"{(w + 1) * WINDOW:>9} {cells}")


def share_series(run: Run, variant: str, size: int = 100) -> list[float]:
    """Share of `variant` over the trailing `size` requests, at every request."""
    out, acc = [], 0
    for t, v in enumerate(run.variant):
        acc += v == variant
        if t >= size:
            acc -= run.variant[t - size] == variant
        out.append(acc / min(t + 1, size))
    return out


def adapt_after(run: Run, drift_at: int) -> int | None:
    """Requests after the drift until the trailing-100 cheap share falls below half its pre-drift level."""
    shares = share_series(run, CHEAP)
    before = statistics.fmean(shares[drift_at - 500 : drift_at])
    for t in range(drift_at, len(shares)):
        if shares[t] < before / 2:
            return t - drift_at
    return None


def tight_loop_us(policy: Policy, seed: int, calls: int = 2000) -> float:
    """Wall-clock µs per choose() over a tight loop; the best of 5 runs filters out preemption."""
    world = World(seed + 2)
    feats = [world.request().features for _ in range(calls)]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for f in feats:
            policy.choose(f)
        best = min(best, (time.perf_counter_ns() - t0) / calls / 1e3)
    return best


def pct(xs: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--drift-requests", type=int, default=4000)
    ap.add_argument("--delay", type=int, default=20, help="requests between a call and its feedback")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n, seed = args.requests, args.seed
    started = time.perf_counter()

    makers: dict[str, Callable[[], Policy]] = {
        "learned": lambda: learned(seed),
        "strong": lambda: StaticPolicy(STRONG),
        "cheap": lambda: StaticPolicy(CHEAP),
        "random": lambda: WeightedPolicy({CHEAP: 1, STRONG: 1}, rng=random.Random(seed)),
    }
    policies = {name: make() for name, make in makers.items()}
    runs = {name: simulate(p, n, seed, args.delay) for name, p in policies.items()}
    ln_policy = policies["learned"]
    print(f"== learning curve: {n} requests, feedback delay {args.delay}, mean per {WINDOW}-request window")
    print("   (q = share of good answers; cost in cheap-model units per request)")
    print_curves(runs)

    ln, st = runs["learned"], runs["strong"]
    tail = n // 2
    print("\n== final figures (learned vs strong-only, same request stream)")
    for label, sl in (("all requests", slice(None)), (f"last {n - tail}", slice(tail, None))):
        q = statistics.fmean(ln.quality[sl]) / statistics.fmean(st.quality[sl])
        c = sum(ln.cost[sl]) / sum(st.cost[sl])
        print(f"  {label:>14}: quality {q:6.1%} of strong-only, cost {c:6.1%} of strong-only")
    share = statistics.fmean(v == CHEAP for v in ln.variant[tail:])
    print(f"  cheap share (last {n - tail}): {share:.1%}   target: quality >= 97%, cost <= 50%")

    drift_n = args.drift_requests
    drift_at = drift_n // 2
    print(f"\n== drift: cheap model's P(ok) on easy requests drops 0.94 -> 0.30 at request {drift_at}")
    print("   learned = decay 0.001 + drift alarm; decay-only = no alarm; no-forget = neither")
    drifts = {
        "learned": simulate(learned(seed), drift_n, seed + 1, args.delay, drift_at),
        "decay-only": simulate(learned(seed, drift_alarm=None), drift_n, seed + 1, args.delay, drift_at),
        "no-forget": simulate(learned(seed, 0.0, None), drift_n, seed + 1, args.delay, drift_at),
    }
    print_curves(drifts)
    for name, run in drifts.items():
        k = adapt_after(run, drift_at)
        after = statistics.fmean(v == CHEAP for v in run.variant[drift_n - 500 :])
        shown = f"{k} requests" if k is not None else f"not within {drift_n - drift_at} requests"
        print(f"  {name:>10}: cheap share halves after {shown}; cheap share over the last 500: {after:.1%}")

    print(
        "\n== cost of the learned policy, per call (thread CPU time: time lent to other processes excluded)"
    )
    for what, xs in (
        ("choose()", ln.decide_ns + drifts["learned"].decide_ns),
        ("update()", ln.update_ns + drifts["learned"].update_ns),
    ):
        mean, p50, p99 = statistics.fmean(xs) / 1e3, pct(xs, 50) / 1e3, pct(xs, 99) / 1e3
        print(f"  {what}: mean {mean:.1f} µs, p50 {p50:.1f} µs, p99 {p99:.1f} µs  (n={len(xs)})")
    print(f"  choose() wall clock, best of 5 x 2000 calls: {tight_loop_us(ln_policy, seed):.1f} µs per call")
    ref = min(timeit.repeat("for _ in range(1000): pass", number=200, repeat=5)) / 200 * 1e6
    print(f"  load reference: an empty 1000-iteration Python loop takes {ref:.1f} µs on this machine now")
    print(f"\ntotal runtime {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
