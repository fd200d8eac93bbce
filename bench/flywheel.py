"""The flywheel on real data: a real small LLM behind the gateway learns SNIPS intents from feedback.

    python -m bench.flywheel [--calls 200] [--window 40] [--learn-every 40] [--embedder minilm]
    python -m bench.flywheel --routing [--calls 100]

Data: BIG-bench 1.0.0 `intent_recognition` (SNIPS utterances, 7 intents, gold labels), streamed in a
seeded shuffled order: one online pass, each call scored before its own feedback is sent
(prequential), so there is no separate test split. Users are simulated with the official openai SDK:
a thumbs-up when the intent (first label name in the answer) is right; on a wrong answer a correction
carrying the gold label with probability `--correct-share` (0.7), else a thumbs-down or a
"regenerated" signal (50/50). Learning: POST /admin/learn every `--learn-every` calls (the background
loop is off, so runs are reproducible); new artifacts are promoted at once (canary_share 0) when
they pass the gateway's offline evaluation on held-out logged calls.

Default mode, one llama.cpp server (SmolLM2-135M) and two routes with the same seed template:
`intents` (learners on) and `intents-static` (learn = false: the static baseline).
`--routing`: a second server (Qwen2.5-Coder-1.5B, 20x the price); routes `intents` (learned routing
policy over cheap + strong), `intents-cheap` (cheap only) and `intents-strong` (strong only), all three
with learners on, so the arms differ in routing alone. The router sees what retrieval found for each
request (`Features.memory_*`: how close and how unanimous the retrieved examples are), and each
learning cycle replays `--replays` held-out calls on both models (learners/routing_replay.py).

Writes bench/out/flywheel[-routing].md and .png, keeps the temp data dir and prints the
`flywheel prompts diff` command that shows the learned template/index.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.flywheel_plot import ArmRun, totals_table, window_table, write_chart
from bench.loadgen import Service, free_port, serve_flywheel
from bench.real.bigbench import Item, TaskInfo, load_task, load_task_info
from bench.real.cache import ResponseCache
from bench.real.intent_fewshot import extract_label
from bench.real.serve import LlamaServer, serve_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
ADMIN_ENV = "FLYWHEEL_BENCH_ADMIN_KEY"
# $/Mtok (input, output): strong costs 20x cheap
PRICES: dict[str, tuple[float, float]] = {"cheap": (0.05, 0.10), "strong": (1.0, 2.0)}
LLAMA_KEYS = {"cheap": "smollm2", "strong": "qwen-coder"}
CACHE = ROOT / "bench" / ".cache" / "responses.sqlite"  # --cache


@dataclass(frozen=True)
class Arm:
    """One way of serving the stream: a gateway route, and whether it learns."""

    name: str
    route: str
    learns: bool


def seed_template(info: TaskInfo) -> str:
    """The prompt that worked in bench/real/intent_fewshot.py: task prefix + answer format."""
    return info.task_prefix.strip() + " Answer with the intent name only.\n"


def write_config(tmp: Path, args: argparse.Namespace, servers: dict[str, LlamaServer], urls: dict[str, str],
                 port: int) -> Path:
    """The bench's config.toml (in the kept temp dir); `urls`: each model's OpenAI base URL."""
    models = ""
    for m, srv in servers.items():
        i, o = PRICES[m]
        models += (f'[providers.{m}p]\nkind = "openai"\nbase_url = "{urls[m]}"\ntimeout_s = 300\n'
                   f'[models.{m}]\nprovider = "{m}p"\nname = "{srv.alias}"\n'
                   f"price = {{ input_per_mtok = {i}, output_per_mtok = {o} }}\n"
                   f"params = {{ temperature = 0.0, max_tokens = 12 }}\n\n")
    retr = f"retrieval = {{ k = {args.k}, min_score = {args.min_score} }}"
    retries = "retries = { attempts = 2, attempt_timeout_s = 300, deadline_s = 600 }"
    common = f'template = "intents.md"\n{retr}\n{retries}\n'
    if args.routing:
        routes = (f'[routes.intents]\nvariants = ["cheap", "strong"]\n{common}'
                  '[routes.intents.policy]\nkind = "learned"\nquality_metric = "any"\n'
                  f"min_quality = {args.min_quality}\nexplore = {args.explore}\n"
                  f"decay = {args.decay}\ndims = {args.dims}\nreplays = {args.replays}\n"
                  f"prior_quality = {{ cheap = {args.prior_cheap}, strong = 0.95 }}\n"
                  "prior_cost = { cheap = 1, strong = 20 }\n"
                  + ('[routes.intents.escalate]\nto = "strong"\n' if args.escalate else "") + "\n"
                  f'[routes.intents-cheap]\nvariants = ["cheap"]\npolicy = {{ kind = "static" }}\n{common}\n'
                  f'[routes.intents-strong]\nvariants = ["strong"]\npolicy = {{ kind = "static" }}\n{common}')
    else:
        routes = (f'[routes.intents]\nvariants = ["cheap"]\npolicy = {{ kind = "static" }}\n{common}\n'
                  f'[routes.intents-static]\nvariants = ["cheap"]\npolicy = {{ kind = "static" }}\n{common}'
                  "learn = false\n")
    cfg = f"""# written by bench/flywheel.py
[server]
host = "127.0.0.1"
port = {port}

[store]
url = "sqlite:///{tmp}/flywheel.db"
spill_path = "{tmp}/spill.jsonl"

[auth]
admin_key_env = "{ADMIN_ENV}"

{models}{routes}
[learners]
enabled = false              # learning only through POST /admin/learn, every --learn-every calls
embedder = "{args.embedder}"
canary_share = {args.canary_share}
metric = "normalised"
heldout_share = {args.heldout_share}
seed = {args.seed}
max_eval_calls = {args.max_eval_calls}
demo_trials = {args.demo_trials}
max_demos = 4
min_samples = 5

[privacy]
store_raw = true             # public benchmark data, no PII; keeps utterances verbatim for retrieval
"""
    path = tmp / "config.toml"
    path.write_text(cfg, encoding="utf-8")
    return path


class Users:
    """Simulated users: ask through the openai SDK, judge by the gold label, send feedback."""

    def __init__(self, gateway_url: str, admin_key: str, seed: int, correct_share: float) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=f"{gateway_url}/v1", api_key="bench", max_retries=1, timeout=600)
        self.admin = httpx.Client(base_url=gateway_url, timeout=1800,
                                  headers={"authorization": f"Bearer {admin_key}"})
        self.rng = random.Random(seed)
        self.correct_share = correct_share
        self.feedback = {"up": 0, "correction": 0, "down": 0, "regenerated": 0}

    def ask(self, route: str, item: Item, user: str) -> tuple[str, str, float, float, str]:
        """(call id, answer, latency s, cost in $ as the gateway reports it, variant)."""
        started = time.perf_counter()
        raw = self.client.chat.completions.with_raw_response.create(
            model=route, messages=[{"role": "user", "content": item.input}], user=user)
        latency = time.perf_counter() - started
        chat = raw.parse()
        # the gateway's figure: an escalated call also paid for the answer it did not use
        return (chat.id, chat.choices[0].message.content or "", latency,
                float(raw.headers.get("x-flywheel-cost-usd", "0")), raw.headers.get("x-flywheel-variant", ""))

    def react(self, call_id: str, right: bool, gold: str, user: str) -> None:
        """Thumbs-up if right; else a correction (correct_share) or a thumbs-down / regeneration."""
        body: dict[str, Any] = {"call_id": call_id, "user": user}
        if right:
            body["rating"], kind = 1, "up"
        elif self.rng.random() < self.correct_share:
            body["correction"], kind = gold, "correction"
        elif self.rng.random() < 0.5:
            body["rating"], kind = -1, "down"
        else:
            body["signal"], kind = "regenerated", "regenerated"
        self.client.post("/feedback", cast_to=httpx.Response, body=body)
        self.feedback[kind] += 1

    def learn(self, route: str) -> dict[str, Any]:
        """POST /admin/learn: one full cycle now; its report."""
        r = self.admin.post("/admin/learn", json={"route": route})
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


def run_arm(users: Users, arm: Arm, stream: Sequence[Item], args: argparse.Namespace) -> ArmRun:
    """Stream every item through the arm's route, with feedback, learning every --learn-every calls."""
    run = ArmRun(arm.name)
    started = time.perf_counter()
    for i, item in enumerate(stream):
        user = f"user-{i % 50}"
        call_id, answer, latency, cost, variant = users.ask(arm.route, item, user)
        variant = variant or "cheap"
        right = extract_label(answer, item.choices or []) == item.target
        run.correct.append(right)
        run.cost_usd.append(cost)
        run.latency_s.append(latency)
        run.variant.append(variant)
        users.react(call_id, right, item.target, user)
        if arm.learns and (i + 1) % args.learn_every == 0 and i + 1 < len(stream):
            t0 = time.perf_counter()
            rep = users.learn(arm.route)
            with (Path(args.data_dir) / "learn-reports.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps({"arm": arm.name, "after": i + 1, "report": rep}) + "\n")
            run.learn_s += time.perf_counter() - t0
            run.eval_calls += int(rep.get("eval_calls", 0))
            run.eval_cost_usd += float(rep.get("eval_cost_usd", 0.0))
            cands = ", ".join(f"{c['kind']} {c['version']} {c['outcome']}" for c in rep.get("candidates", []))
            print(f"    learn after {i + 1}: {time.perf_counter() - t0:.0f} s, {rep.get('examples')} examples, "
                  f"{rep.get('eval_calls')} eval calls; {cands or 'no candidate'}", flush=True)
        if (i + 1) % args.window == 0 or i + 1 == len(stream):
            w = slice(max(0, i + 1 - args.window), i + 1)
            share = sum(v == "cheap" for v in run.variant[w]) / len(run.variant[w])
            print(f"  {arm.name:>15} {i + 1:>4} calls: window acc {sum(run.correct[w]) / len(run.correct[w]):6.1%} "
                  f"$/call {sum(run.cost_usd[w]) / len(run.cost_usd[w]) * 1e6:7.2f}µ "
                  f"p50 {sorted(run.latency_s[w])[len(run.latency_s[w]) // 2]:5.2f} s cheap {share:4.0%} "
                  f"(elapsed {time.perf_counter() - started:.0f} s)", flush=True)
    return run


def start_gateway(config: Path, port: int, tmp: Path, admin_key: str) -> Service:
    """`flywheel serve` as a child process; waits for /healthz."""
    return serve_flywheel(config, port, tmp / "gateway.log", env={ADMIN_ENV: admin_key})


def settings_text(args: argparse.Namespace, arms: Sequence[Arm], n_items: int, config: Path) -> str:
    """Every setting of the run, for the report."""
    models = ", ".join(f"{m} = {LLAMA_KEYS[m]} (${PRICES[m][0]}/${PRICES[m][1]} per Mtok in/out)"
                       for m in (("cheap", "strong") if args.routing else ("cheap",)))
    return "\n".join([
        f"- dataset: BIG-bench 1.0.0 intent_recognition (SNIPS, 7 intents), {n_items} items; stream = first "
        f"{args.calls} of a random.Random({args.seed}) shuffle; prequential (each call scored before its feedback)",
        f"- models: {models}; llama.cpp n_ctx 2048, --threads {args.threads}, temperature 0, max_tokens 12",
        "- prompt: system = BIG-bench task prefix + 'Answer with the intent name only.' (seed template t0), "
        "user = BIG-bench input ('Utterance: …'); label = first intent name in the answer",
        f"- users: thumbs-up if right; if wrong, correction (gold) with p={args.correct_share}, else "
        f"thumbs-down / 'regenerated' 50/50; user ids user-0..49; seed {args.seed}",
        f"- learning: POST /admin/learn every {args.learn_every} calls (background loop off); "
        f"embedder {args.embedder}; retrieval k={args.k} min_score={args.min_score}; canary_share "
        f"{args.canary_share}; metric normalised; heldout_share {args.heldout_share}; max_eval_calls "
        f"{args.max_eval_calls}; demo_trials {args.demo_trials}; max_demos 4; min_samples 5",
        *([f"- routing: learned policy, floor mode min_quality {args.min_quality}, explore {args.explore}, "
           f"decay {args.decay}, dims {args.dims}, replays {args.replays} per cycle, quality_metric any, "
           f"prior_quality cheap {args.prior_cheap} / strong 0.95"
           + ("; escalate to strong when the answer disagrees with memory" if args.escalate else "")]
          if args.routing else []),
        f"- arms: {', '.join(f'{a.name} = route {a.route} (learns: {a.learns})' for a in arms)}",
        f"- config: {config}",
    ])


def verdicts(runs: dict[str, ArmRun], routing: bool) -> list[str]:
    """The acceptance checks, as measured."""
    if not routing:
        on, off = runs["learners on"], runs["learners off"]
        gain = (on.accuracy - off.accuracy) * 100
        return [f"learners on {on.accuracy:.1%} vs off {off.accuracy:.1%} over the pass: +{gain:.1f} points "
                f"(target >= 20): {'MET' if gain >= 20 else 'NOT MET'}"]
    lr, strong = runs["learned routing"], runs["strong only"]
    q = lr.accuracy / strong.accuracy if strong.accuracy else 0.0
    c = sum(lr.cost_usd) / sum(strong.cost_usd) if sum(strong.cost_usd) else 0.0
    half = lr.n // 2
    q2 = (sum(lr.correct[half:]) / max(1, sum(strong.correct[half:])))
    c2 = sum(lr.cost_usd[half:]) / max(1e-12, sum(strong.cost_usd[half:]))
    return [f"learned routing, whole pass: accuracy {q:.1%} of strong-only, cost {c:.1%} of strong-only "
            f"(target >= 97% at <= 50%): {'MET' if q >= 0.97 and c <= 0.5 else 'NOT MET'}",
            f"learned routing, second half: accuracy {q2:.1%} of strong-only, cost {c2:.1%}: "
            f"{'MET' if q2 >= 0.97 and c2 <= 0.5 else 'NOT MET'}"]


def main(argv: list[str] | None = None) -> int:
    """Start the servers and the gateway, stream the arms, print and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--routing", action="store_true", help="two models: learned routing vs cheap-/strong-only")
    ap.add_argument("--calls", type=int, default=None, help="calls per arm (default 200; 120 with --routing)")
    ap.add_argument("--window", type=int, default=None, help="calls per printed window (default calls/5)")
    ap.add_argument("--learn-every", type=int, default=None, help="POST /admin/learn every N calls (default 40/20)")
    ap.add_argument("--embedder", default="minilm", choices=("minilm", "hashing", "static"))
    ap.add_argument("--correct-share", type=float, default=0.7)
    ap.add_argument("--k", type=int, default=4, help="retrieved examples per call")
    ap.add_argument("--min-score", type=float, default=0.0)
    ap.add_argument("--canary-share", type=float, default=0.0)
    ap.add_argument("--heldout-share", type=float, default=0.2)
    ap.add_argument("--max-eval-calls", type=int, default=40)
    ap.add_argument("--demo-trials", type=int, default=1)
    ap.add_argument("--min-quality", type=float, default=0.9, help="routing: floor, share of the best")
    ap.add_argument("--explore", type=float, default=0.1, help="routing: epsilon")
    ap.add_argument("--decay", type=float, default=0.01, help="routing: forgetting per update")
    ap.add_argument("--dims", type=int, default=16, help="routing: embedding projection size")
    ap.add_argument("--replays", type=int, default=20, help="routing: held-out calls replayed per cycle")
    ap.add_argument("--prior-cheap", type=float, default=0.85, help="routing: cold-start P(cheap ok)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--escalate", action="store_true",
                    help="routing: re-ask the strong model when the answer disagrees with the route's memory")
    ap.add_argument("--cache", action="store_true",
                    help=f"answer repeated model requests from {CACHE} (re-runs; latencies then not the model's)")
    args = ap.parse_args(argv)
    # SIGTERM (e.g. from a job runner) unwinds like an error, so the servers below are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.calls = min(args.calls or (120 if args.routing else 200), 1000)
    args.window = args.window or max(1, args.calls // 5)
    args.learn_every = args.learn_every or (20 if args.routing else 40)

    info = load_task_info("intent_recognition")
    items = load_task("intent_recognition")
    stream = list(items)
    random.Random(args.seed).shuffle(stream)
    stream = stream[: args.calls]
    arms = ([Arm("learned routing", "intents", True), Arm("cheap only", "intents-cheap", True),
             Arm("strong only", "intents-strong", True)] if args.routing
            else [Arm("learners off", "intents-static", False), Arm("learners on", "intents", True)])
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    args.data_dir = str(tmp)
    (tmp / "intents.md").write_text(seed_template(info), encoding="utf-8")
    servers = {m: serve_model(LLAMA_KEYS[m], n_threads=args.threads)
               for m in (("cheap", "strong") if args.routing else ("cheap",))}
    admin_key = secrets.token_hex(16)
    started = time.perf_counter()
    gateway: Service | None = None
    caches: dict[str, ResponseCache] = {}
    try:
        for srv in servers.values():
            srv.start()
        if args.cache:
            caches = {m: ResponseCache(srv.base_url, CACHE).__enter__() for m, srv in servers.items()}
        urls = {m: caches[m].base_url if m in caches else srv.base_url for m, srv in servers.items()}
        port = free_port()
        config = write_config(tmp, args, servers, urls, port)
        gateway = start_gateway(config, port, tmp, admin_key)
        print(settings_text(args, arms, len(items), config), flush=True)
        users = Users(gateway.url, admin_key, args.seed, args.correct_share)
        runs: dict[str, ArmRun] = {}
        for arm in arms:
            users.rng = random.Random(args.seed)  # every arm sees the same user behaviour draws
            print(f"== {arm.name} (route {arm.route})", flush=True)
            runs[arm.name] = run_arm(users, arm, stream, args)
    finally:
        if gateway is not None:
            gateway.stop()
        for cache in caches.values():
            cache.__exit__(None, None, None)
        for srv in servers.values():
            srv.stop()
    took = time.perf_counter() - started
    order = list(runs.values())
    name = "flywheel-routing" if args.routing else "flywheel"
    chart = OUT / f"{name}.png"
    title = (f"SNIPS intents via the Flywheel gateway, {args.calls} calls, seed {args.seed}"
             + (" (routing)" if args.routing else " (SmolLM2-135M)"))
    write_chart(order, args.window, chart, title)
    checks = verdicts(runs, args.routing)
    if caches:
        hits, misses = sum(c.hits for c in caches.values()), sum(c.misses for c in caches.values())
        checks.append(f"response cache {CACHE.name}: {hits} hits, {misses} misses "
                      "(the latencies of hits are not the model's)")
    diff_cmd = f"flywheel --config {config} prompts diff intents"
    md = "\n\n".join([
        f"# {title}", settings_text(args, arms, len(items), config),
        f"## Whole pass\n\n{totals_table(order)}",
        f"## Per {args.window}-call window\n\n{window_table(order, args.window)}",
        "## Acceptance\n\n" + "\n".join(f"- {c}" for c in checks),
        f"Feedback sent (all arms): {json.dumps(users.feedback)}. Wall time {took:.0f} s. Chart: {chart.name}.",
        f"Learned template/index: `{diff_cmd}` (and `--kind index` per the CLI help).",
    ]) + "\n"
    (OUT / f"{name}.md").write_text(md, encoding="utf-8")
    print("\n" + totals_table(order))
    for c in checks:
        print(c)
    print(f"wall time {took:.0f} s; wrote {OUT / (name + '.md')} and {chart}")
    print(f"data dir kept: {tmp}\nshow the learned template: {diff_cmd}")
    os.environ.pop(ADMIN_ENV, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
