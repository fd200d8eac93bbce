"""Request-path cost of templates and retrieval, measured through the live `Augmenter`.

    python bench/augment_cost.py [--examples 2000] [--requests 400] [--embedders hashing,minilm]

For each embedder: an example index of N curated examples (a faiss flat index up to 20k, IVF
above) and a template with instructions and demonstrations are installed in an `Augmenter`, as the
learning loop does; then `augment()` is timed per request (render the template, embed the last
user message through `AsyncBatchEmbedder`, search top-4, build the few-shot messages), one request
at a time and 16 at a time, with fresh questions (no embedding cache hits) and repeated ones.
Also: the same through a `Pipeline` with the in-process fake provider, with and without the
augmenter, so the difference is the whole added cost of a request. bench/retrieval.py measures
the index alone at 100k. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gateway.config.settings import parse_settings
from gateway.serve.augment import Augmenter, LoadedIndex, LoadedTemplate, RouteServing, ServingSet
from gateway.serve.pipeline import Pipeline, RequestContext
from gateway.serve.runtime import build_runtime
from gateway.serve.templating import CompiledTemplate, Demonstration, Template
from retrieval.embeddings import AsyncBatchEmbedder, EmbedderUnavailable, load_embedder
from retrieval.examples import Example, ExampleIndex

_WORDS = ("order refund parcel invoice password account shipping delivery return card plan address "
          "subscription discount voucher warranty repair store opening hours login email phone")
WORDS = _WORDS.split()


def question(i: int) -> str:
    a, b, c = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)], WORDS[(i * 13 + 5) % len(WORDS)]
    return f"How can I change the {a} {b} for my {c}, request {i}?"


def pct(samples: list[float]) -> str:
    s = sorted(samples)

    def p(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * 1000

    return f"p50 {p(0.5):.3f} ms  p99 {p(0.99):.3f} ms  mean {statistics.fmean(s) * 1000:.3f} ms"


def settings() -> object:
    return parse_settings({
        "providers": {"sim": {"kind": "fake"}},
        "models": {"small": {"provider": "sim", "name": "sim-small"}},
        "routes": {"bot": {"variants": ["small"], "retrieval": {"k": 4, "min_score": 0.0}}},
    })


async def run(kind: str, n_examples: int, n_requests: int) -> None:
    try:
        embedder = load_embedder(kind)
    except EmbedderUnavailable as exc:
        print(f"[{kind}] skipped: {exc}")
        return
    examples = [Example(f"c{i}#f", question(i), f"Answer number {i}.", f"c{i}", "correction", float(i))
                for i in range(n_examples)]
    t = time.perf_counter()
    index = await asyncio.to_thread(ExampleIndex.build, examples, embedder)
    build = time.perf_counter() - t
    template = Template("You are the assistant of {{ route }}. Today is {{ today }}.",
                        instructions=("Answers about refunds must mention: the 14-day window",),
                        demonstrations=tuple(Demonstration(question(i), f"Answer {i}.") for i in range(3)))
    s = settings()
    async_embedder = AsyncBatchEmbedder(embedder)
    aug = Augmenter(lambda: s, lambda: async_embedder.embed_one)  # type: ignore[arg-type, return-value]
    aug.install("bot", RouteServing(ServingSet(LoadedTemplate("t1", CompiledTemplate(template)),
                                               LoadedIndex("i1", index))))
    print(f"[{kind}] {n_examples} examples, dim {embedder.dim}: index built in {build:.2f}s")

    async def one(i: int, fresh: bool) -> float:
        msgs = [{"role": "user", "content": question(n_examples + i if fresh else 0)}]
        t0 = time.perf_counter()
        out = await aug.augment("bot", msgs, RequestContext(f"c{i}", user=f"u{i}"))
        assert out is not None and out.index_version == "i1"
        return time.perf_counter() - t0

    await one(-1, True)  # warm-up
    seq = [await one(i, True) for i in range(n_requests)]
    print(f"  augment, sequential, fresh questions   {pct(seq)}")
    cached = [await one(i, False) for i in range(n_requests)]
    print(f"  augment, sequential, repeated question {pct(cached)}")
    t = time.perf_counter()
    conc: list[float] = []
    for start in range(0, n_requests, 16):
        conc += await asyncio.gather(*(one(n_requests + start + j, True) for j in range(16)))
    wall = time.perf_counter() - t
    print(f"  augment, 16 concurrent, fresh          {pct(conc)}  ({len(conc) / wall:.0f} req/s)")

    rt = build_runtime(s)  # type: ignore[arg-type]
    route = rt.resolve("bot")
    for label, pipeline in (("without augmenter", Pipeline(lambda r: None)),
                            ("with augmenter   ", Pipeline(lambda r: None, aug))):
        samples = []
        for i in range(n_requests):
            body = {"model": "bot", "messages": [{"role": "user", "content": question(3 * n_requests + i)}]}
            t0 = time.perf_counter()
            await pipeline.chat(route, body, RequestContext(f"p{i}", user=f"u{i}"))
            samples.append(time.perf_counter() - t0)
        print(f"  pipeline.chat {label}          {pct(samples)}")
    await async_embedder.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--embedders", default="hashing,minilm")
    args = ap.parse_args()
    for kind in args.embedders.split(","):
        asyncio.run(run(kind.strip(), args.examples, args.requests))


if __name__ == "__main__":
    main()
