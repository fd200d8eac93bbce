"""Learned routing through the real gateway: learning curve, cost, drift, decision cost.

Run from the repository root:  python -m bench.routing_gateway [--requests 2000] [--drift-requests 1200]

Setup: one gateway (uvicorn in a thread, a config.toml in a temp dir, SQLite store) with two fake
models: `cheap` answers "Sorry, I cannot answer that reliably." to every request that mentions
one of its `hard` words (the fake provider's documented `hard` option) and `strong`, 20x the
price, answers everything. Four routes serve the same request stream: `bot` (learned, hashing
embedder), `bot-strong` (static), `bot-cheap` (static) and `bot-random` (weighted 50/50). Users
(the official openai SDK) send chat requests; an answer is good unless it is the cheap model's
refusal. For `bot`, 70% of users rate the answer through POST /v1/feedback (sent with the SDK's
generic `post`), 3% of ratings are wrong. Requests: 16 topics, 5 hard, random slot values.

Drift: after `--requests`, config.toml is rewritten so that the cheap model also fails two easy
topics (password, refund); the gateway reloads it (the learned state is carried over) and the
bench reports how many requests it takes until the learned route's cheap share on those topics
(over the trailing 20 such requests) falls below half of what it was. The policy: quality floor
75% of the best variant, 5% exploration, 64 embedding dims, decay 0.003, drift alarm 0.15.
Prints figures only. About 13,000 gateway requests; measured here at 3.5-4 min while other jobs
loaded the 2 cores (load average ~7); `--requests`/`--drift-requests` shorten it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn

from flywheel.app import create_app
from gateway.config.settings import load_settings
from gateway.providers.fakes.provider import HARD_REPLY
from gateway.server import Gateway
from policies import Features, LearnedPolicy
from retrieval.embeddings import HashingEmbedder

WINDOW = 200
PRICE = {"cheap": (0.5, 1.5), "strong": (10.0, 30.0)}  # $/Mtok in, out: strong costs 20x
EASY = [
    ("password", "How do I reset my password for the {x} account? I tried {n} times."),
    ("opening", "What are your opening hours in {x} on {d}?"),
    ("refund", "Can I get a refund for order {n}? It arrived {x}."),
    ("shipping", "How long does shipping to {x} take for a parcel of {n} kg?"),
    ("invoice", "Please send me a copy of invoice {n} for {x}."),
    ("address", "I moved to {x}; how do I change my delivery address?"),
    ("newsletter", "Unsubscribe me from the newsletter, my email is {x}{n}@example.com."),
    ("tracking", "Where is my package? The tracking number is {n} and it shipped from {x}."),
    ("discount", "Is there a discount code for students in {x} this {d}?"),
    ("warranty", "Does the warranty cover a broken screen on model {n} bought in {x}?"),
    ("login", "The app logs me out every {n} minutes on my {x} phone, why?"),
]
HARD = [
    ("amortization", "Compute the amortization schedule for a {n} loan at {x} percent over {d} years."),
    ("indemnification", "Draft an indemnification clause for a supplier in {x} with a cap of {n}."),
    ("eigenvalue", "Prove that every eigenvalue of the {x} matrix of size {n} is real."),
    ("subpoena", "How should we answer a subpoena from {x} about records from {d} {n}?"),
    ("derivative", "Price a derivative on {x} with strike {n} using a binomial tree of {d} steps."),
]
DRIFTED = ("password", "refund")  # easy topics the cheap model starts failing at the drift
XS = ["Berlin", "Paris", "Lisbon", "Oslo", "Texas", "Android", "iPhone", "Ontario", "Kyoto", "Lagos", "broken",
      "late", "damaged", "Quebec", "Madrid"]
DS = ["Monday", "Friday", "summer", "winter", "2019", "10", "30", "weekend"]
ROUTES = {"learned": "bot", "strong": "bot-strong", "cheap": "bot-cheap", "random": "bot-random"}


@dataclass(frozen=True)
class Request:
    topic: str
    text: str
    user: str


def make_request(rng: random.Random) -> Request:
    topic, template = rng.choice(HARD if rng.random() < 1 / 3 else EASY)
    text = template.format(x=rng.choice(XS), n=rng.randint(2, 99999), d=rng.choice(DS))
    return Request(topic, text, f"user-{rng.randint(1, 300)}")


def config(tmp: Path, drifted: bool) -> str:
    cheap_hard = [t for t, _ in HARD] + (list(DRIFTED) if drifted else [])
    prices = {m: f"{{input_per_mtok = {i}, output_per_mtok = {o}}}" for m, (i, o) in PRICE.items()}
    return f"""
[server]
reload_interval_s = 0.2
[store]
url = "sqlite:///{tmp}/flywheel.db"
spill_path = "{tmp}/spill.jsonl"
[providers.cheapp]
kind = "fake"
hard = {json.dumps(cheap_hard)}
[providers.strongp]
kind = "fake"
[models.cheap]
provider = "cheapp"
name = "cheap-1"
price = {prices["cheap"]}
[models.strong]
provider = "strongp"
name = "strong-1"
price = {prices["strong"]}
[routes.bot]
variants = ["cheap", "strong"]
fallbacks = ["strong"]
[routes.bot.policy]
kind = "learned"
quality_metric = "rating"
min_quality = 0.75
explore = 0.05
dims = 64
decay = 0.003
drift_alarm = 0.15
prior_quality = {{cheap = 0.6, strong = 0.9}}
prior_cost = {{cheap = 1, strong = 20}}
[routes.bot-strong]
variants = ["strong"]
policy = {{kind = "static"}}
[routes.bot-cheap]
variants = ["cheap"]
policy = {{kind = "static"}}
[routes.bot-random]
variants = ["cheap", "strong"]
policy = {{kind = "weighted", sticky = false, weights = {{cheap = 1, strong = 1}}}}
[learners]
enabled = false
embedder = "hashing"
[privacy]
store_raw = true
"""


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))  # make sure the watcher sees it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(path: Path) -> tuple[Gateway, uvicorn.Server, threading.Thread, str]:
    app = create_app(load_settings(path), config_path=path)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           loop="uvloop", http="httptools", access_log=False,
                                           timeout_keep_alive=60))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    return app.state.gateway, server, thread, f"http://127.0.0.1:{port}/v1"


def cost_of(variant: str, usage: Any) -> float:
    i, o = PRICE[variant]
    return float(usage.prompt_tokens * i + usage.completion_tokens * o) / 1e6


@dataclass
class Served:
    quality: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)
    topic: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, base_url: str, seed: int, concurrency: int) -> None:
        # retries: a keep-alive connection the server closes just as it is reused is not a result
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=2,
                                         http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=64)))
        self.rng = random.Random(seed)
        self.sem = asyncio.Semaphore(concurrency)
        self.runs = {name: Served() for name in ROUTES}
        self.feedback_sent = 0

    async def one(self, name: str, req: Request, slot: int) -> None:
        r = await self.client.chat.completions.with_raw_response.create(
            model=ROUTES[name], messages=[{"role": "user", "content": req.text}], user=req.user)
        completion = r.parse()
        variant = r.headers["x-flywheel-variant"]
        good = completion.choices[0].message.content != HARD_REPLY
        run = self.runs[name]
        run.quality[slot], run.cost[slot], run.variant[slot] = float(good), cost_of(variant, completion.usage), variant
        run.topic[slot] = req.topic
        if name == "learned" and self.rng.random() < 0.7:  # this user rates the answer
            rating = 1 if good else -1
            if self.rng.random() < 0.03:
                rating = -rating
            await self.client.post("/feedback", cast_to=httpx.Response,
                                   body={"call_id": completion.id, "rating": rating, "user": req.user})
            self.feedback_sent += 1

    async def request(self, req: Request, slot: int) -> None:
        try:
            await asyncio.gather(*(self.one(name, req, slot) for name in ROUTES))
        finally:
            self.sem.release()

    async def phase(self, n: int) -> None:
        start = len(self.runs["learned"].quality)
        for run in self.runs.values():
            run.quality += [0.0] * n
            run.cost += [0.0] * n
            run.variant += [""] * n
            run.topic += [""] * n
        reqs = [make_request(self.rng) for _ in range(n)]
        tasks: list[asyncio.Task[None]] = []
        for i, req in enumerate(reqs):
            await self.sem.acquire()  # `concurrency` user requests in flight, started in order
            tasks.append(asyncio.create_task(self.request(req, start + i)))
        await asyncio.gather(*tasks)  # raises if any request failed: no silent holes in the figures


def windows(xs: list[float], size: int = WINDOW) -> list[float]:
    return [statistics.fmean(xs[i : i + size]) for i in range(0, len(xs), size)]


def print_curve(runs: dict[str, Served], drift_at: int | None) -> None:
    strong_cost = statistics.fmean(runs["strong"].cost)
    print(f"{'requests':>9} " + " ".join(f"{n + ' q':>10} {'cost':>5}" for n in runs) + f" {'cheap share':>12}")
    qs = {n: windows(r.quality) for n, r in runs.items()}
    cs = {n: windows(r.cost) for n, r in runs.items()}
    share = windows([float(v == "cheap") for v in runs["learned"].variant])
    for w in range(len(share)):
        cells = " ".join(f"{qs[n][w]:>10.3f} {cs[n][w] / strong_cost:>5.2f}" for n in runs)
        mark = "  <- drift" if drift_at is not None and w * WINDOW <= drift_at < (w + 1) * WINDOW else ""
        print(f"{(w + 1) * WINDOW:>9} {cells} {share[w]:>12.1%}{mark}")


def drift_recovery(run: Served, drift_at: int, trail: int = 20) -> tuple[float, float, int | None]:
    """(cheap share on drifted topics before, after, requests until it halves) for the learned route."""
    idx = [i for i, t in enumerate(run.topic) if t in DRIFTED]
    before = [run.variant[i] == "cheap" for i in idx if drift_at - 1500 <= i < drift_at]
    base = statistics.fmean(before) if before else 0.0
    after = [i for i in idx if i >= drift_at]
    for k in range(len(after)):
        recent = after[max(0, k - trail + 1) : k + 1]
        if k + 1 >= 10 and statistics.fmean(run.variant[i] == "cheap" for i in recent) < base / 2:
            return base, statistics.fmean(run.variant[i] == "cheap" for i in after[-trail:]), after[k] - drift_at
    return base, statistics.fmean(run.variant[i] == "cheap" for i in after[-trail:]), None


def decision_cost(policy: LearnedPolicy, seed: int, calls: int = 2000) -> tuple[float, float]:
    """(µs per choose(), µs per hashing embedding) on the trained policy, best of 5 tight loops."""
    rng = random.Random(seed)
    embedder = HashingEmbedder()
    texts = [make_request(rng).text for _ in range(calls)]
    t0 = time.perf_counter()
    vecs = [embedder.embed([t])[0] for t in texts]
    embed_us = (time.perf_counter() - t0) / calls * 1e6
    feats = [Features("bot", None, None, len(t), 1, False, v) for t, v in zip(texts, vecs, strict=True)]
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for f in feats:
            policy.choose(f)
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best, embed_us


async def run(args: argparse.Namespace, path: Path, gw: Gateway, base_url: str) -> None:
    bench = Bench(base_url, args.seed, args.concurrency)
    started = time.perf_counter()
    await bench.phase(args.requests)
    took = time.perf_counter() - started
    n = args.requests
    calls = n * len(ROUTES) + bench.feedback_sent
    print(f"== learning curve: {n} requests x {len(ROUTES)} routes, {bench.feedback_sent} ratings via /v1/feedback, "
          f"{took:.0f} s ({calls / took:.0f} gateway requests/s)")
    print(f"   q = share of good answers, cost relative to strong-only, per {WINDOW}-request window")
    print_curve(bench.runs, None)
    learned, strong = bench.runs["learned"], bench.runs["strong"]
    half = n // 2
    print("\n== learned vs strong-only, same request stream")
    verdicts = []
    for label, sl in (("all requests", slice(0, n)), (f"last {n - half}", slice(half, n))):
        q = statistics.fmean(learned.quality[sl]) / statistics.fmean(strong.quality[sl])
        c = sum(learned.cost[sl]) / sum(strong.cost[sl])
        verdicts.append(q >= 0.97 and c <= 0.5)
        print(f"  {label:>14}: quality {q:6.1%} of strong-only, cost {c:6.1%} of strong-only")
    for name in ("cheap", "random"):
        r = bench.runs[name]
        q = statistics.fmean(r.quality[half:n]) / statistics.fmean(strong.quality[half:n])
        c = sum(r.cost[half:n]) / sum(strong.cost[half:n])
        print(f"  {name + '-only' if name == 'cheap' else 'random 50/50':>14}: quality {q:6.1%}, cost {c:6.1%}")
    share = statistics.fmean(v == "cheap" for v in learned.variant[half:n])
    print(f"  learned cheap share (last {n - half}): {share:.1%}; target quality >= 97%, cost <= 50% of strong-only: "
          f"{'MET' if verdicts[-1] else 'NOT MET'} (last half)")
    stats = gw.routing.stats
    print(f"  router: {stats.decisions} decisions, {stats.updates} online updates, {stats.embed_missing} without "
          f"an embedding, {stats.unmatched} unmatched feedback")

    print(f"\n== drift: at request {n} config.toml makes the cheap model fail {', '.join(DRIFTED)} too (reload)")
    old = gw.runtime
    write(path, config(path.parent, drifted=True))
    deadline = time.monotonic() + 10
    while gw.runtime is old and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    policy = gw.runtime.routes["bot"].policy
    assert isinstance(policy, LearnedPolicy)
    print(f"   reloaded: learned state carried over ({policy.updates} updates)" if gw.runtime is not old
          else "   RELOAD NOT SEEN")
    await bench.phase(args.drift_requests)
    print_curve({k: Served(r.quality[n:], r.cost[n:], r.variant[n:], r.topic[n:]) for k, r in bench.runs.items()},
                0)
    before, after, k = drift_recovery(learned, n)
    shown = f"{k} requests" if k is not None else f"not within {args.drift_requests} requests"
    print(f"  learned cheap share on {'/'.join(DRIFTED)}: {before:.1%} before the drift; halves after {shown}; "
          f"{after:.1%} over the last 20 such requests")
    tail = slice(n + args.drift_requests // 2, n + args.drift_requests)
    q = statistics.fmean(learned.quality[tail]) / statistics.fmean(strong.quality[tail])
    c = sum(learned.cost[tail]) / sum(strong.cost[tail])
    print(f"  after the drift (last {args.drift_requests // 2}): quality {q:.1%}, cost {c:.1%} of strong-only")

    per_choose, per_embed = decision_cost(policy, args.seed + 1)
    print("\n== decision cost per request (trained policy, dims 64, best of 5 x 2000)")
    print(f"  choose(): {per_choose:.1f} µs; hashing embedding of the last user message: {per_embed:.1f} µs "
          f"(on the embedder thread, not the event loop)")
    await bench.client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--drift-requests", type=int, default=1200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flywheel-routing-") as tmp:
        path = Path(tmp) / "config.toml"
        write(path, config(Path(tmp), drifted=False))
        gw, server, thread, base_url = serve(path)
        try:
            asyncio.run(run(args, path, gw, base_url))
        finally:
            server.should_exit = True
            thread.join(30)
    print(f"\ntotal runtime {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
