"""The evaluation economy: evaluation keeps to its share of each upstream, unchanged prompts are not
paid twice, an identical candidate is not evaluated again, and repeated rejections back off."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.config.settings import LearnerSettings, RetrievalSettings, parse_settings
from gateway.serve.augment import ServingSet
from gateway.serve.runtime import build_runtime
from learners.dataset import EvalCase
from learners.economy import Economy, UpstreamGate
from learners.evaluate import Budget, Replayer
from learners.scoring import build_metric
from tests.learners.scenario import Client, config, correct_everything

CASES = tuple(EvalCase(f"c{i}", ({"role": "user", "content": f"question {i}"},), f"question {i}", "x", {},
                       variant="m") for i in range(10))


async def test_evaluation_keeps_to_its_upstream_share_and_pays_an_unchanged_prompt_once() -> None:
    settings = parse_settings({"providers": {"up": {"kind": "fake", "latency_ms": 30}},
                               "models": {"m": {"provider": "up", "name": "m"}},
                               "routes": {"bot": {"variants": ["m"]}}})
    runtime = build_runtime(settings)
    economy = Economy(lambda: LearnerSettings(eval_concurrency=2, eval_rate_per_s=0))
    budget = Budget(100)
    replayer = Replayer(lambda: runtime, "bot", build_metric("exact"), budget, RetrievalSettings(), None,
                        concurrency=8, economy=economy)
    first = await replayer.run(ServingSet(), CASES)
    assert len(first.results) == 10 and budget.calls == 10
    assert economy.gate.peak == {"up": 2}  # 8 replays may run at once; the upstream sees at most 2
    again = await replayer.run(ServingSet(), CASES)  # the same prompts on the same variant: from the cache
    assert budget.calls == 10 and replayer.cached == 10
    assert [r.answer for r in again.results] == [r.answer for r in first.results]


async def test_the_gate_spaces_evaluation_calls_to_its_rate() -> None:
    gate = UpstreamGate(lambda: LearnerSettings(eval_concurrency=4, eval_rate_per_s=20))
    starts: list[float] = []

    async def one() -> None:
        async with gate.slot("up"):
            starts.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(5)))
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:], strict=False)]
    assert min(gaps) >= 0.04  # 1 / 20 s apart, less the timer's slack
    assert gate.peak["up"] <= 4


def test_repeated_rejections_back_off() -> None:
    economy = Economy(lambda: LearnerSettings(reject_backoff_max=3))
    sat_out = []
    for _ in range(5):
        economy.record("bot", "template", "h", "d", "", False)
        n = economy.sits_out("bot", "template")
        sat_out.append(n)
        while economy.sits_out("bot", "template"):
            pass
    assert sat_out == [0, 1, 3, 3, 3]  # 2^(r-1) - 1 cycles, at most reject_backoff_max
    economy.record("bot", "template", "h2", "d", "t9", True)
    assert economy.sits_out("bot", "template") == 0 and ("bot", "template") not in economy.rejections


def test_an_identical_candidate_is_not_evaluated_again(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    c = Client(make_gateway(config(fake_upstream, tmp_path)).url)
    correct_everything(c)
    first = c.learn()
    assert {x["version"]: x["outcome"] for x in first["candidates"]}.get("i1") == "canary", first
    index = next(x for x in first["candidates"] if x["kind"] == "index")
    assert "; retrieval " in index["note"] and len(index["evaluation"]["trials"]) == 5  # tuned on held-out calls
    second = c.learn()  # nothing new: the same index would be built, and the same template trials
    assert not [x for x in second["candidates"] if x["kind"] == "index"], second["candidates"]
    assert any(s.startswith("index: same content as i1, passed already") for s in second["eval_skipped"]), second
    assert second["eval_cached"] > 0 and second["eval_calls"] < first["eval_calls"]


def test_the_learning_embedder_embeds_each_text_once() -> None:
    from learners.economy import CachedEmbedder
    from retrieval.embeddings import HashingEmbedder

    inner = HashingEmbedder()
    seen: list[str] = []

    class Counting:
        name, dim = inner.name, inner.dim

        def embed(self, texts: list[str]) -> np.ndarray:
            seen.extend(texts)
            return inner.embed(texts)

    cached = CachedEmbedder(Counting())  # type: ignore[arg-type]
    first = cached.embed(["a b", "c d", "a b"])
    again = cached.embed(["c d", "e f"])
    assert seen == ["a b", "c d", "e f"]
    assert np.allclose(first[1], again[0]) and np.allclose(first[0], inner.embed(["a b"])[0])
