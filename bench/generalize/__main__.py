"""bench.generalize: the learning loop on five public tasks it was never tuned on, with a real local model.

    python -m bench.generalize [--tasks polarity,topic,quantities,nickname,valence] [--calls 150]
                               [--models smollm2[,qwen-coder]] [--routing-task polarity] [--routing-calls 60]
                               [--routing-only] [--escalate] [--policy-keys "min_quality = 0.97"]
                               [--quick] [--threads 1] [--seed 0] [--loop on|off]
                               [--oracle-figures polarity=0.72,...]

Per task (bench/generalize/tasks.py), through a real gateway on loopback in front of llama.cpp
(bench/generalize/gateway_pass.py): learners off (a `learn = false` route), learners on (config.toml's
`[learners]` defaults, the background loop included, plus POST /admin/learn every 50 calls in a thread
beside the stream; `--loop off`: the first run's protocol, /admin/learn only), the oracle (k = 7 nearest labelled
examples by TF-IDF, straight to the model), the best constant answer, the first effect (calls and
seconds), evaluation spend and live p50 latency during learning cycles vs. without (like for like:
plain-prompt calls paired with the learners-off pass, learned-prompt calls with their stored prompts
re-sent once learning is idle, bench/generalize/resend.py). With a second
model, the routing arm (cheap vs. strong at 10x the price) on `--routing-task`.
`--quick`: 60 calls per task, learning every 30 (not the issue's protocol; a smoke run).
`--oracle-figures`: skip the oracle arm of the tasks named and use an earlier run's accuracy (it is
deterministic). Writes bench/out/generalize.md (after every task) and bench/out/generalize-<task>.png;
keeps the temp data dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.generalize import report
from bench.generalize.cycle_log import merge_loop_cycles, read_cycles
from bench.generalize.effects import effects
from bench.generalize.gateway_pass import (
    ADMIN_ENV,
    Client,
    PassRun,
    Upstream,
    attach_served_artifacts,
    run_pass,
    start_gateway,
    write_config,
)
from bench.generalize.oracle import OracleRun, run_oracle
from bench.generalize.resend import resend_learned
from bench.generalize.routing_arm import RoutingResult, run_routing
from bench.generalize.scoring import best_constant
from bench.generalize.tasks import TASKS, Task
from bench.loadgen import Service, free_port
from bench.real.serve import LlamaServer, serve_model

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "out"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m bench.generalize", description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    ap.add_argument("--calls", type=int, default=150, help="calls per task and arm (capped by the pool)")
    ap.add_argument("--models", default="smollm2", help="cheap[,strong] from bench.real.models; a second "
                    "model adds the routing arm")
    ap.add_argument("--routing-task", default="polarity")
    ap.add_argument("--routing-calls", type=int, default=60, help="calls per routing arm (the strong model is slow)")
    ap.add_argument("--routing-only", action="store_true", help="only the routing arm (needs two --models)")
    ap.add_argument("--escalate", action="store_true", help="the routed route re-asks strong when cheap's answer "
                    "disagrees with what its retrieved examples mostly answer (`escalate = { to = \"strong\" }`, "
                    "meant for label and short-extraction routes)")
    ap.add_argument("--policy-keys", default="", help="more keys of the routed route's learned policy, as in "
                    "config.toml, e.g. \"min_quality = 0.97\" (the floor rule: the cheapest variant within 97 %% "
                    "of the best predicted quality); default: the documented defaults")
    ap.add_argument("--oracle-calls", type=int, default=0, help="oracle on an evenly spaced sample of the "
                    "stream of about this size (0: every call); it is the slowest arm (no prompt-cache reuse)")
    ap.add_argument("--learn-every", type=int, default=50)
    ap.add_argument("--window", type=int, default=50, help="the 'last window' of the learners-on pass")
    ap.add_argument("--quick", action="store_true", help="60 calls per task, learning every 30")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 is often faster on shared cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loop", choices=("on", "off"), default="on", help="on: [learners] enabled = true (the "
                    "documented default); off: learning only through /admin/learn (the first run's protocol)")
    ap.add_argument("--oracle-figures", default="", help="task=accuracy,...: reuse an earlier oracle run's "
                    "figure for these tasks instead of running the arm")
    args = ap.parse_args(argv)
    try:
        args.oracle_known = {k: float(v) for k, v in (x.split("=", 1) for x in args.oracle_figures.split(",") if x)}
    except ValueError:
        ap.error("--oracle-figures: expected task=accuracy[,task=accuracy...]")
    if args.quick:
        args.calls, args.learn_every, args.window = 60, 30, 30
    unknown = [t for t in args.tasks.split(",") if t not in TASKS]
    if unknown:
        ap.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    return args


def run_task(client: Client, task: Task, args: argparse.Namespace, cheap: LlamaServer,
             data: Path) -> report.TaskResult:
    """All arms of one task, with the calls' served artifacts and the loop's cycles attached."""
    stream = task.stream(args.calls, args.seed)
    print(f"== {task.name} ({task.shape}, pool {len(task.pool)}, {len(stream)} calls)", flush=True)
    off = run_pass(client, task, f"{task.name}-static", stream, learns=False, learn_every=args.learn_every,
                   seed=args.seed)
    on = run_pass(client, task, task.name, stream, learns=True, learn_every=args.learn_every, seed=args.seed)
    attach_served_artifacts(data / "flywheel.db", [off, on])
    added = merge_loop_cycles(on, read_cycles(data / "gateway.log"))
    print(f"    the loop ran {added} cycle(s) of its own during the pass", flush=True)
    resend_learned(client, data / "flywheel.db", on, f"{task.name}-bare", task.max_tokens)
    t0 = time.perf_counter()
    if task.name in args.oracle_known:
        oracle = OracleRun(reused=args.oracle_known[task.name])
        print(f"    oracle: {oracle.reused:.3f} (an earlier run's figure, not re-run)", flush=True)
    else:
        step = max(1, len(stream) // args.oracle_calls) if args.oracle_calls else 1
        oracle = run_oracle(task, stream[::step], cheap.base_url, cheap.alias)
        print(f"    oracle: {sum(oracle.correct) / len(oracle.correct):.3f} over {len(oracle.correct)} calls "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    const = best_constant(task.shape, stream, task.constants)
    off_acc = sum(off.correct) / len(off.correct)
    return report.TaskResult(task.name, task.shape, off, on, oracle, const, effects(on, off_acc, off=off), args.window)


def main(argv: list[str] | None = None) -> int:
    """Start llama.cpp and the gateway, run every task (and the routing arm), print and write the figures."""
    args = parse(argv)
    # SIGTERM (e.g. from a job runner) unwinds like an error, so the servers below are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, load0 = time.perf_counter(), os.getloadavg()
    tasks = [TASKS[name](args.seed) for name in args.tasks.split(",")]
    keys = args.models.split(",")
    routing_task = next((t for t in tasks if t.name == args.routing_task), None) if len(keys) > 1 else None
    servers = {"cheap": serve_model(keys[0], n_threads=args.threads)}
    if len(keys) > 1:
        servers["strong"] = serve_model(keys[1], n_threads=args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-generalize-"))
    admin_key = secrets.token_hex(16)
    gateway: Service | None = None
    results: list[report.TaskResult] = []
    routing: RoutingResult | None = None
    try:
        for srv in servers.values():
            srv.start()
        port = free_port()
        ups = [Upstream(name, srv.alias, srv.base_url) for name, srv in servers.items()]
        config = write_config(tmp, port, tasks, ups, routing_task.name if routing_task else None,
                              loop=args.loop == "on", escalate=args.escalate, policy_keys=args.policy_keys)
        gateway = start_gateway(config, port, tmp, admin_key)
        client = Client(gateway.url, admin_key)
        print(f"gateway {gateway.url}, config {config}, llama.cpp --threads {args.threads}, "
              f"load average at start {load0[0]:.2f}", flush=True)
        for task in [] if args.routing_only else tasks:
            results.append(run_task(client, task, args, servers["cheap"], tmp))
            # so a run cut short still leaves the finished tasks' figures
            write_outputs(args, results, None, tmp, started, load0)
        # the loop's cycles still running when a task ended (they run on into the next tasks) are logged by now
        cycles = read_cycles(tmp / "gateway.log")
        for r in results:
            merge_loop_cycles(r.on, cycles)
        results = [report.TaskResult(r.task, r.shape, r.off, r.on, r.oracle, r.constant,
                                     effects(r.on, r.acc_off, off=r.off), r.window) for r in results]
        if routing_task is not None:
            routing = run_routing(client, routing_task, routing_task.stream(args.routing_calls, args.seed + 1),
                                  args.learn_every, args.seed)
            runs: list[PassRun] = [routing.strong, routing.routed]
            attach_served_artifacts(tmp / "flywheel.db", runs)
    finally:
        if gateway is not None:
            gateway.stop()
        for srv in servers.values():
            srv.stop()
    write_outputs(args, results, routing, tmp, started, load0, final=True)
    os.environ.pop(ADMIN_ENV, None)
    return 0


def write_outputs(args: argparse.Namespace, results: list[report.TaskResult], routing: RoutingResult | None,
                  tmp: Path, started: float, load0: tuple[float, float, float], *, final: bool = False) -> None:
    """The markdown report, charts, learn-reports.jsonl and calls.jsonl of the tasks done so far
    (printed when `final`)."""
    took, load1 = time.perf_counter() - started, os.getloadavg()
    with (tmp / "learn-reports.jsonl").open("w", encoding="utf-8") as f:
        for r in results:
            for c in r.on.cycles:
                f.write(json.dumps({"task": r.task, "after": c.after, "s": c.ended - c.started,
                                    "report": c.report}) + "\n")
    with (tmp / "calls.jsonl").open("w", encoding="utf-8") as f:  # every call as the users saw it, to re-derive
        for r in results:
            for arm, run in (("off", r.off), ("on", r.on)):
                for i, row in enumerate(run.rows):
                    f.write(json.dumps({"task": r.task, "arm": arm, "n": i + 1, **dataclasses.asdict(row),
                                        "resent_s": run.resent.get(i)}) + "\n")
    charts = [report.chart(r, OUT) for r in results]
    lines = [f"{r.task}: " + "; ".join(f"{text}: {'n/a' if ok is None else 'MET' if ok else 'NOT MET'}"
                                       for text, ok in report.checks(r)) for r in results]
    lines += [f"{r.task} candidates: {r.fx.outcomes}" for r in results]
    lines += routing.lines() if routing else []
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    conditions = (f"{when}; models {args.models} on llama.cpp --threads {args.threads}; {args.calls} calls per task, "
                  f"[learners] loop {args.loop}, /admin/learn every {args.learn_every}; "
                  f"oracle on {args.oracle_calls or 'every'} calls; seed {args.seed}; "
                  + (f"routing arm {args.routing_calls} calls{', escalate' if args.escalate else ''}"
                     f"{', policy ' + args.policy_keys if args.policy_keys else ''}; " if routing else "")
                  + f"load average {load0[0]:.2f} at start, "
                  f"{load1[0]:.2f} at end (2 shared cores); wall time {took:.0f} s")
    md = "\n\n".join([f"# bench.generalize\n\n{conditions}", report.table(results),
                      "\n".join(f"- {x}" for x in lines), report.legend(),
                      f"Data dir (config, gateway log, store, learn-reports.jsonl): {tmp}"]) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    md_path = OUT / ("generalize-routing.md" if args.routing_only else "generalize.md")
    md_path.write_text(md, encoding="utf-8")
    if not final:
        return
    print("\n" + report.table(results))
    for x in lines:
        print(x)
    print(conditions)
    print(f"wrote {md_path} and {', '.join(str(c) for c in charts)}; data dir kept: {tmp}")


if __name__ == "__main__":
    raise SystemExit(main())
