"""SNIPS intent accuracy of a small local LLM: zero-shot vs fixed vs retrieved demonstrations.

Serves a model from bench.real.models through llama.cpp's OpenAI-compatible server, asks it for the
intent of held-out BIG-bench ``intent_recognition`` utterances, and prints accuracy and per-call
latency for each way of building the prompt:
  zero       task instructions only
  fixed      k demonstrations chosen once (one per intent, seeded) for every query
  retrieved  the k training utterances most similar to the query (TF-IDF cosine)

Usage: python -m bench.real.intent_fewshot [--model smollm2] [--n 50] [--k 7] [--layout turns]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .bigbench import Item, TaskInfo, load_task, load_task_info, split_by_group
from .models import MODELS
from .serve import serve_model

Selector = Callable[[Item], list[Item]]


@dataclass(frozen=True)
class ModeResult:
    """Accuracy and latency of one prompting mode over the test items."""

    mode: str
    n: int
    correct: int
    unparsed: int
    latencies_s: tuple[float, ...]
    prompt_tokens: tuple[int, ...]

    @property
    def accuracy(self) -> float:
        """Share of items whose extracted label equals the gold intent."""
        return self.correct / self.n if self.n else 0.0


def extract_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label mentioned first in ``answer`` (case, spaces and hyphens ignored), else None.

    Small models answer "Intent: play_music", "play music" or "PlayMusic."; all map to play_music.
    """
    flat = re.sub(r"[^a-z]+", "", answer.lower())
    best: tuple[int, int, str] | None = None
    for label in labels:
        pos = flat.find(label.replace("_", ""))
        if pos >= 0 and (best is None or (pos, -len(label)) < best[:2]):
            best = (pos, -len(label), label)
    return best[2] if best else None


def fixed_examples(train: Sequence[Item], k: int, seed: int) -> list[Item]:
    """k demonstrations, round-robin over intents so each intent appears (k=7: one each)."""
    rng = random.Random(seed)
    by_label: dict[str, list[Item]] = {}
    for it in train:
        by_label.setdefault(it.target, []).append(it)
    pools = {label: rng.sample(items, len(items)) for label, items in sorted(by_label.items())}
    chosen: list[Item] = []
    while len(chosen) < k and any(pools.values()):
        for pool in pools.values():
            if pool and len(chosen) < k:
                chosen.append(pool.pop())
    rng.shuffle(chosen)
    return chosen


def tfidf_selector(train: Sequence[Item], k: int) -> Selector:
    """Nearest training items by TF-IDF cosine (word 1-2 grams); most similar placed last."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [str(it.meta.get("utterance", it.input)) for it in train]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    matrix = vectorizer.fit_transform(texts)

    def select(item: Item) -> list[Item]:
        query = vectorizer.transform([str(item.meta.get("utterance", item.input))])
        sims = (matrix @ query.T).toarray().ravel()
        top = sims.argsort()[::-1][:k]
        return [train[int(i)] for i in reversed(top)]

    return select


def chat_messages(item: Item, demos: Sequence[Item], info: TaskInfo, layout: str) -> list[dict[str, str]]:
    """Chat prompt: instructions in the system message, demonstrations inline or as turns."""
    system = info.task_prefix.strip() + " Answer with the intent name only."
    if layout == "inline" and demos:
        shots = info.example_separator.join(f"{d.input}{info.output_prefix}{d.target}" for d in demos)
        system += f"\n\nExamples:\n\n{shots}"
    messages = [{"role": "system", "content": system}]
    if layout == "turns":
        for d in demos:
            messages += [{"role": "user", "content": d.input}, {"role": "assistant", "content": d.target}]
    messages.append({"role": "user", "content": item.input})
    return messages


def completion_prompt(item: Item, demos: Sequence[Item], info: TaskInfo) -> str:
    """BIG-bench's own few-shot text format, for base (non-instruct) models."""
    shots = [f"{d.input}{info.output_prefix}{d.target}" for d in demos]
    shots.append(f"{item.input}{info.output_prefix.rstrip()}")
    return info.task_prefix + info.example_separator.join(shots)


def run_mode(
    client: Any,
    model: str,
    style: str,
    layout: str,
    mode: str,
    test: Sequence[Item],
    selector: Selector,
    info: TaskInfo,
    show: int = 0,
) -> ModeResult:
    """Ask the model for every test item with demonstrations from ``selector``; score exact labels."""
    correct = unparsed = 0
    latencies: list[float] = []
    prompt_tokens: list[int] = []
    for idx, item in enumerate(test):
        demos = selector(item)
        start = time.perf_counter()
        if style == "chat":
            messages = chat_messages(item, demos, info, layout)
            resp = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=12,
                temperature=0.0,
            )
            answer = resp.choices[0].message.content or ""
        else:
            resp = client.completions.create(
                model=model,
                prompt=completion_prompt(item, demos, info),
                max_tokens=12,
                temperature=0.0,
                stop=["\n"],
            )
            answer = resp.choices[0].text
        latencies.append(time.perf_counter() - start)
        if resp.usage is not None:
            prompt_tokens.append(resp.usage.prompt_tokens)
        label = extract_label(answer, item.choices or [])
        unparsed += label is None
        correct += label == item.target
        if idx < show:
            print(f"    [{mode}] gold={item.target} got={label} raw={answer.strip()[:60]!r}")
    return ModeResult(mode, len(test), correct, unparsed, tuple(latencies), tuple(prompt_tokens))


def main(argv: list[str] | None = None) -> int:
    """Serve the model, run the requested modes on n held-out items, print the table."""
    from openai import OpenAI

    parser = argparse.ArgumentParser(description="SNIPS intent accuracy via a local llama.cpp server")
    parser.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    parser.add_argument("--n", type=int, default=50, help="test items")
    parser.add_argument("--k", type=int, default=7, help="demonstrations per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="zero,fixed,retrieved")
    parser.add_argument(
        "--layout",
        default="turns",
        choices=["turns", "inline"],
        help="chat models: demonstrations as user/assistant turns or inline in the system",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="llama.cpp threads; 1 is faster when other jobs keep the 2 cores busy"
    )
    parser.add_argument("--show", type=int, default=3, help="print the first answers of each mode")
    args = parser.parse_args(argv)

    spec = MODELS[args.model]
    info = load_task_info("intent_recognition")
    items = load_task("intent_recognition")
    train, test = split_by_group(items, "id", test_share=args.n / len(items), seed=args.seed)
    test = test[: args.n]
    selectors: dict[str, Selector] = {"zero": lambda _item: []}
    fixed = fixed_examples(train, args.k, args.seed)
    selectors["fixed"] = lambda _item: fixed
    selectors["retrieved"] = tfidf_selector(train, args.k)

    print(
        f"model={args.model} style={spec.style} layout={args.layout} train={len(train)} "
        f"test={len(test)} k={args.k} seed={args.seed} threads={args.threads}"
    )
    with serve_model(args.model, n_threads=args.threads) as srv:
        print(f"server ready in {srv.startup_s:.1f} s")
        client = OpenAI(base_url=srv.base_url, api_key="local", max_retries=0, timeout=300)
        # One throwaway call so the first measured call does not pay for warm-up.
        run_mode(client, args.model, spec.style, args.layout, "warmup", test[:1], selectors["zero"], info)
        results = []
        for mode in args.modes.split(","):
            started = time.perf_counter()
            res = run_mode(
                client, args.model, spec.style, args.layout, mode, test, selectors[mode], info, show=args.show
            )
            results.append(res)
            lat = sorted(res.latencies_s)
            tokens = statistics.mean(res.prompt_tokens) if res.prompt_tokens else float("nan")
            print(
                f"  {mode:9s} acc={res.accuracy:6.1%} ({res.correct}/{res.n}, unparsed {res.unparsed}) "
                f"latency mean={statistics.mean(lat) * 1000:.0f} ms p50={lat[len(lat) // 2] * 1000:.0f} ms "
                f"max={lat[-1] * 1000:.0f} ms prompt_tokens~{tokens:.0f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
