"""Instructions per proxied request, counted by valgrind's callgrind: repeatable where CPU time is not.

Run from the repository root (needs `valgrind`, Debian package `valgrind`):

    python -m bench.instructions [--requests 600] [--concurrency 16] [--arms floor,gateway,nolog,raw,stream]

CPU seconds per request move by ±40 % between two runs on a shared 2-core machine; instruction
counts move by ~1-5 %, whatever else runs (they still depend a little on timing: how many rows
a writer batch holds, how many requests one event-loop wake-up serves). Each arm starts one
server under `valgrind --tool=callgrind --instr-atstart=no` in front of the fake upstream (0 ms),
warms it up uninstrumented, switches instrumentation on (`callgrind_control -i on`), sends
`--requests` requests at `--concurrency`, waits for the call writer to flush, switches it off and
divides the instructions of all the server's threads by the requests. User space only: the
kernel's share (sockets, ~15 % of the gateway's CPU time) is not counted.

Arms: `floor` (bare starlette + aiohttp pass-through, as in bench/overhead.py), `gateway` (logging
on, scrubbing on: the default), `nolog` (`[store] log_calls = false`), `raw` (`[privacy]
store_raw = true`: logging without scrubbing), `stream` (the gateway, streamed responses),
`nojournal` (the gateway without the writer's journal, `[store] journal_ms = 0`).
Prints figures only; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import Service, free_port, run_load, wait_http
from bench.overhead import body_for, start_upstream, write_config

REPO = Path(__file__).resolve().parent.parent
ARMS = ("floor", "gateway", "nolog", "raw", "stream", "nojournal")
CONFIG_EDITS = {"nolog": ("[store]\n", "[store]\nlog_calls = false\n"),
                "nojournal": ("[store]\n", "[store]\njournal_ms = 0\n"),
                "raw": ("[learners]\n", "[privacy]\nstore_raw = true\n\n[learners]\n")}


def server_command(arm: str, config: Path, port: int, upstreams: dict[int, Service]) -> list[str]:
    if arm == "floor":
        routes = [f"fake-{d}={svc.url}" for d, svc in upstreams.items()]
        return [sys.executable, "-m", "bench.overhead", "--serve-floor", str(port), *routes]
    return [sys.executable, "-m", "flywheel.cli", "--config", str(config), "serve", "--port", str(port)]


def callgrind_total(out: Path) -> int:
    """The `totals:` of every part/thread file callgrind wrote for one run."""
    total = 0
    for f in out.parent.glob(out.name + "*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                break
    return total


async def count(arm: str, args: argparse.Namespace, tmp: Path, upstreams: dict[int, Service]) -> float:
    """Instructions per request (thousands) of one arm."""
    (tmp / arm).mkdir()
    config = write_config(tmp / arm, upstreams)
    if arm in CONFIG_EDITS:
        old, new = CONFIG_EDITS[arm]
        config.write_text(config.read_text().replace(old, new, 1))
    port = free_port()
    out = tmp / arm / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           *server_command(arm, config, port, upstreams)]
    log = tmp / arm / "server.log"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    svc = Service(proc, port, log, time.perf_counter())
    try:
        wait_http(svc, "/healthz", timeout_s=300)
        stream = arm == "stream"
        body = body_for("fake-0" if arm == "floor" else "bench-0", stream)
        url = svc.url + "/v1/chat/completions"
        warm = await run_load(url, body, requests=200, concurrency=args.concurrency, stream=stream)
        if warm.failed:
            raise RuntimeError(f"{arm}: warm-up failed: {warm.statuses} {warm.error_samples[:2]}")
        await asyncio.sleep(1.0)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        res = await run_load(url, body, requests=args.requests, concurrency=args.concurrency, stream=stream)
        await asyncio.sleep(2.0)  # the writer flushes what these requests queued (flush_ms 200)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        if res.failed:
            raise RuntimeError(f"{arm}: {res.failed} requests failed: {res.statuses}")
    finally:
        proc.terminate()
        proc.wait(60)
    return callgrind_total(out) / args.requests / 1000


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-instr-") as tmpdir:
        tmp = Path(tmpdir)
        upstreams = {d: start_upstream(d, tmp) for d in (0, 50)}
        try:
            results = {}
            for arm in args.arms:
                results[arm] = await count(arm, args, tmp, upstreams)
                print(f"  {arm:8s} {results[arm]:8.0f} k instructions per request", flush=True)
        finally:
            for svc in upstreams.values():
                svc.stop()
    if "floor" in results and "gateway" in results:
        print(f"gateway / floor: {results['gateway'] / results['floor']:.2f}")
    if {"gateway", "nolog"} <= results.keys():
        print(f"logging (capture, scrubbing, store): {results['gateway'] - results['nolog']:.0f} k per request")
    if {"gateway", "raw"} <= results.keys():
        print(f"  of which scrubbing: {results['gateway'] - results['raw']:.0f} k per request")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=600, help="instrumented requests per arm")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS), help=f"any of {', '.join(ARMS)}")
    args = p.parse_args(argv)
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arms: {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)")
        return 2
    print(f"Flywheel instructions per request (callgrind; {args.requests} requests per arm at concurrency "
          f"{args.concurrency}, 0 ms upstream, 1,000 distinct prompts)")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
