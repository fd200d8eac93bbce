"""The oracle arm: the same model shown the k nearest labelled examples, no gateway in between.

Nearest by TF-IDF over character 3-5-grams of the input (scikit-learn): most inputs here are a
single word or name, where word TF-IDF finds no neighbour at all. The labelled pool is the task's
full pool minus the query itself, so the oracle sees what a perfect learner could have stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from bench.generalize.scoring import is_right
from bench.generalize.tasks import Task
from bench.real.bigbench import Item


class Neighbours:
    """k nearest pool items of a query by TF-IDF cosine (the query's own item excluded)."""

    def __init__(self, pool: Sequence[Item]) -> None:
        self.pool = list(pool)
        self.vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        self.matrix = self.vec.fit_transform([it.input for it in self.pool])

    def nearest(self, item: Item, k: int) -> list[Item]:
        """The k most similar pool items, most similar first; ties keep pool order."""
        sims = (self.matrix @ self.vec.transform([item.input]).T).toarray().ravel()
        order = np.argsort(-sims, kind="stable")
        out: list[Item] = []
        for j in order:
            cand = self.pool[int(j)]
            if cand.meta.get("id") != item.meta.get("id"):
                out.append(cand)
            if len(out) == k:
                break
        return out


def messages(task: Task, demos: Sequence[Item], item: Item) -> list[dict[str, str]]:
    """System = the task's seed instruction; each demonstration a user/assistant turn (nearest last)."""
    msgs = [{"role": "system", "content": task.instruction.strip()}]
    for d in reversed(demos):
        msgs += [{"role": "user", "content": d.input}, {"role": "assistant", "content": d.target}]
    return [*msgs, {"role": "user", "content": item.input}]


@dataclass
class OracleRun:
    """Per-call outcomes of the oracle arm, or (`reused`) an earlier run's accuracy when the arm is skipped:
    the oracle is deterministic (temperature 0, fixed neighbours), so re-running it only costs time."""

    correct: list[bool] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    reused: float | None = None


def run_oracle(task: Task, stream: Sequence[Item], base_url: str, model: str, k: int = 7) -> OracleRun:
    """Ask the model directly (llama.cpp's OpenAI endpoint) with the k nearest examples for each item."""
    nb = Neighbours(task.pool)
    run = OracleRun()
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for item in stream:
            body = {"model": model, "messages": messages(task, nb.nearest(item, k), item),
                    "temperature": 0.0, "max_tokens": task.max_tokens}
            t0 = time.perf_counter()
            r = client.post("/chat/completions", json=body)
            r.raise_for_status()
            run.latency_s.append(time.perf_counter() - t0)
            answer = r.json()["choices"][0]["message"].get("content") or ""
            run.correct.append(is_right(task.shape, answer, item))
    return run
