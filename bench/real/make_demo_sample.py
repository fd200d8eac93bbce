"""Cut the small public sample that `flywheel demo` ships: SNIPS intents from BIG-bench.

Reads BIG-bench's `intent_recognition` task straight out of the bigbench 1.0.0 source archive
(see bench/real/bigbench.py) and writes a seeded, label-balanced sample to
flywheel/demo/snips_intents.jsonl. Nothing here is hand-written data.

    python -m bench.real.make_demo_sample [--per-label 50] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

from bench.real.bigbench import load_task

OUT = Path(__file__).resolve().parents[2] / "gateway" / "demo" / "snips_intents.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-label", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    by_label: dict[str, list[str]] = defaultdict(list)
    for item in load_task("intent_recognition"):
        by_label[item.target].append(str(item.meta["utterance"]))
    rng = random.Random(args.seed)
    rows = []
    for label in sorted(by_label):
        utterances = sorted(set(by_label[label]))
        rng.shuffle(utterances)
        rows += [{"utterance": u, "intent": label} for u in utterances[: args.per_label]]
    rng.shuffle(rows)
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows ({len(by_label)} intents) to {OUT}")


if __name__ == "__main__":
    main()
