"""How far a cheap model can be trusted on a task: the answer the route's memory gives, by agreement.

    python -m bench.generalize.memory_bound [--tasks polarity,topic,valence] [--calls 300] [--seed 1] [--k 6]

A cascade (`escalate`) or a floor rule (`min_quality`) can leave a call to the cheap model only
where its answer is as good as the strong one's. The best signal the gateway has for that, on a
task it never saw, is its retrieval memory: what the nearest stored examples answer, and how many
of them agree. This prints, per task, how often the majority answer of the k nearest earlier calls
(embedded by the gateway's MiniLM, every earlier call of the stream in memory: more than a pass's
corrections give) is right, overall and where at least a given share of the k agree, with the
share of calls that clears each bar. It is an upper bound on a memory-gated cheap answer: the
cheap model only copies the memory or does worse. No model is called. The default stream is the
routing arm's (`--seed 1`: `bench.generalize` streams the routing arm with its seed + 1).
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from bench.generalize.scoring import is_right
from bench.generalize.tasks import TASKS
from retrieval.embeddings import load_embedder

WARMUP = 30  # calls before the memory is read (a pass's first corrections)
BARS = (0.5, 0.67, 0.84, 1.0)  # share of the k nearest giving the majority answer


def bound(task_name: str, calls: int, seed: int, k: int) -> list[str]:
    """The printed lines for one task."""
    task = TASKS[task_name](0)
    stream = task.stream(calls, seed)
    vectors = np.asarray(load_embedder("minilm").embed([it.input for it in stream]))
    reads: list[tuple[float, bool]] = []  # (agreement, majority answer right)
    for t in range(WARMUP, len(stream)):
        nearest = np.argsort(-(vectors[:t] @ vectors[t]))[:k]
        answer, votes = Counter(stream[i].target for i in nearest).most_common(1)[0]
        reads.append((votes / len(nearest), is_right(task.shape, answer, stream[t])))
    out = [f"{task_name}: the memory's majority answer is right on {np.mean([r for _, r in reads]):.3f} "
           f"of {len(reads)} calls (k = {k}, after the first {WARMUP})"]
    for bar in BARS:
        kept = [r for a, r in reads if a >= bar - 1e-9]
        acc = f"{np.mean(kept):.3f}" if kept else "–"
        out.append(f"  agreement >= {bar:.2f}: {len(kept) / len(reads):.0%} of calls, right on {acc}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the bound for each task asked for."""
    ap = argparse.ArgumentParser(prog="python -m bench.generalize.memory_bound", description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="polarity,topic,valence")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--k", type=int, default=6)
    args = ap.parse_args(argv)
    for name in args.tasks.split(","):
        for line in bound(name, args.calls, args.seed, args.k):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
