"""What the gateway adds on top of an upstream: latency, throughput, CPU per request, memory, start-up.

Run from the repository root:

    python -m bench.overhead [--requests 2000] [--quick] [--json]

Two fake upstreams (0 ms and 50 ms delay) and the gateway (`flywheel serve`: one uvicorn worker,
uvloop + httptools, a temp SQLite store, learners off, one OpenAI-compatible provider per upstream)
each run in their own process. For every cell (delay x concurrency x streaming) the same bounded
load is sent once straight to the upstream and once through the gateway; CPU is read from
/proc/<pid>/stat around each measured run and divided by the requests. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench.loadgen import LoadResult, make_session, run_load

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "overhead.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DELAYS_MS = (0, 50)
CONCURRENCY = (1, 16, 64)
TARGET_CPU_US = 700.0  # gateway CPU per non-streaming request
TARGET_ADDED_P99_MS = 5.0  # at concurrency 16, 50 ms upstream
TARGET_RSS_MB = 150.0
TARGET_STARTUP_S = 3.0
# ~30 words: the fake upstream echoes them back a word per chunk
PROMPT = ("Summarise this support ticket in one sentence: the customer cannot log in after resetting "
          "the password, the reset e-mail arrived twice, and the second link says it has expired already.")
STREAM_CHUNKS = len(("You said: " + PROMPT).split(" ")) + 3  # + role, finish and usage chunks
CONTEXT = """For scale (CPU per proxied request, measured earlier on this machine, fake upstream):
  bare starlette pass-through, aiohttp client ~500 us | same with httpx 1,700-4,500 us
  litellm.acompletion ~7,800 us | LiteLLM proxy ~15,000 us | TensorZero (Rust) ~350 us"""


@dataclass
class Service:
    """A child process serving HTTP on a loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    spawned_at: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM (uvicorn and aiohttp shut down gracefully), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass(frozen=True)
class Side:
    """One measured run (straight to the upstream, or through the gateway), summarised."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    ttfb_p50_ms: float
    failed: int
    statuses: dict[int, int]
    upstream_cpu_us: float  # fake upstream CPU per request
    gateway_cpu_us: float | None  # None when the gateway was not on the path
    gateway_sys_us: float | None  # the kernel's part of it (sockets, mostly)
    client_cpu_us: float  # the load generator's own CPU per request


@dataclass(frozen=True)
class Cell:
    stream: bool
    delay_ms: int
    concurrency: int
    direct: Side
    gateway: Side

    @property
    def added_p50_ms(self) -> float:
        return self.gateway.p50_ms - self.direct.p50_ms

    @property
    def added_p99_ms(self) -> float:
        return self.gateway.p99_ms - self.direct.p99_ms


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of proc(5)


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return sum(cpu_times(pid))


def idle_cpu_ms_per_s(pid: int, seconds: float) -> float:
    """CPU a process burns while serving nothing, in ms per second of wall time."""
    before, t0 = cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_s(pid) - before) * 1000 / (time.perf_counter() - t0)


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spawn(args: list[str], log_path: Path, port: int) -> Service:
    """Start `python <args>` from the repository root, output to `log_path`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log: IO[bytes] = log_path.open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own descriptor
    return Service(proc, port, log_path, started)


def wait_http(svc: Service, path: str, timeout_s: float = 30.0) -> float:
    """Poll GET `path` until it answers 200; returns seconds since the process was spawned."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"process exited ({svc.proc.returncode}):\n{svc.log_path.read_text()[-3000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=1.0)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.perf_counter() - svc.spawned_at
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.01)
    raise RuntimeError(f"{path} on port {svc.port} did not answer within {timeout_s}s:\n"
                       f"{svc.log_path.read_text()[-3000:]}")


def start_upstream(delay_ms: int, tmp: Path) -> Service:
    port = free_port()
    svc = spawn(["-m", "gateway.providers.fake_server", "--port", str(port), "--delay-ms", str(delay_ms)],
                tmp / f"upstream-{delay_ms}.log", port)
    try:
        wait_http(svc, "/v1/models")
    except BaseException:
        svc.stop()
        raise
    return svc


def write_config(tmp: Path, upstreams: dict[int, Service]) -> Path:
    """One `openai` provider, model and single-variant route per upstream; no litellm, learners off."""
    lines = ['[store]', f'url = "sqlite:///{tmp}/flywheel.db"', f'spill_path = "{tmp}/spill.jsonl"', "",
             "[learners]", "enabled = false", ""]
    for delay, svc in upstreams.items():
        lines += [f"[providers.up{delay}]", 'kind = "openai"', f'base_url = "http://127.0.0.1:{svc.port}/v1"',
                  "",
                  f"[models.m{delay}]", f'provider = "up{delay}"', f'name = "fake-{delay}"',
                  "price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }", "",
                  f"[routes.bench-{delay}]", f'variants = ["m{delay}"]', ""]
    path = tmp / "config.toml"
    path.write_text("\n".join(lines))
    return path


def start_gateway(config: Path, tmp: Path, tag: str) -> tuple[Service, float]:
    """`flywheel --config X serve --port P`; returns the service and its start-up time (spawn -> /healthz)."""
    port = free_port()
    svc = spawn(["-m", "gateway.cli", "--config", str(config), "serve", "--port", str(port)],
                tmp / f"gateway-{tag}.log", port)
    try:
        return svc, wait_http(svc, "/healthz")
    except BaseException:
        svc.stop()
        raise


def body_for(model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [
        {"role": "system", "content": "You are a concise support assistant."},
        {"role": "user", "content": PROMPT}]}
    if stream:
        # the gateway always asks its upstream for usage; ask for it directly too, so both paths match
        body.update(stream=True, stream_options={"include_usage": True})
    return body


async def measure(url: str, body: dict[str, Any], *, n: int, warmup: int, concurrency: int, stream: bool,
                  upstream: Service, gateway: Service | None) -> Side:
    """Warm up, then one bounded run with CPU read around it."""
    async with make_session(concurrency) as session:
        await run_load(url, body, requests=warmup, concurrency=concurrency, stream=stream, session=session)
        up0 = cpu_s(upstream.pid)
        gw0 = cpu_times(gateway.pid) if gateway else (0.0, 0.0)
        me0 = time.process_time()
        res: LoadResult = await run_load(url, body, requests=n, concurrency=concurrency, stream=stream,
                                         session=session)
        me1 = time.process_time()
        gw1 = cpu_times(gateway.pid) if gateway else (0.0, 0.0)
        up1 = cpu_s(upstream.pid)
    if res.failed:
        print(f"  !! {res.failed} failed requests at {url}: {res.statuses} {res.error_samples[:2]}")
    per = 1e6 / max(n, 1)
    return Side(n, res.rps, res.percentile_ms(50), res.percentile_ms(99), res.percentile_ms(50, ttfb=True),
                res.failed, res.statuses, (up1 - up0) * per, (sum(gw1) - sum(gw0)) * per if gateway else None,
                (gw1[1] - gw0[1]) * per if gateway else None, (me1 - me0) * per)


def requests_for(n: int, delay_ms: int, concurrency: int, budget_s: float) -> int:
    """Cap a slow cell (1 request in flight, 50 ms each) so it fits its time budget."""
    if delay_ms <= 0:
        return n
    return max(20, min(n, int(concurrency * budget_s * 1000 / delay_ms)))


async def run_cells(args: argparse.Namespace, upstreams: dict[int, Service], gateway: Service) -> list[Cell]:
    cells: list[Cell] = []
    gw_url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
    for stream in (False, True):
        for delay in DELAYS_MS:
            up = upstreams[delay]
            up_url = f"http://127.0.0.1:{up.port}/v1/chat/completions"
            for conc in args.concurrency:
                n = requests_for(args.requests, delay, conc, args.cell_budget_s)
                warm = min(args.warmup, max(2 * conc, n // 10))
                direct = await measure(up_url, body_for(f"fake-{delay}", stream), n=n, warmup=warm,
                                       concurrency=conc, stream=stream, upstream=up, gateway=None)
                through = await measure(gw_url, body_for(f"bench-{delay}", stream), n=n, warmup=warm,
                                        concurrency=conc, stream=stream, upstream=up, gateway=gateway)
                cell = Cell(stream, delay, conc, direct, through)
                cells.append(cell)
                print(row(cell), flush=True)
    return cells


HEADER = (f"{'stream':>6} {'delay':>5} {'conc':>4} {'n':>5} | {'direct rps':>10} {'p50':>6} {'p99':>6} | "
          f"{'gw rps':>7} {'p50':>6} {'p99':>6} | {'added p50':>9} {'p99':>6} | {'gw CPU':>7} "
          f"{'up CPU':>7} {'client':>7}\n"
          f"{'':>6} {'ms':>5} {'':>4} {'':>5} | {'':>10} {'ms':>6} {'ms':>6} | {'':>7} {'ms':>6} {'ms':>6} | "
          f"{'ms':>9} {'ms':>6} | {'us/req':>7} {'us/req':>7} {'us/req':>7}")


def row(c: Cell) -> str:
    d, g = c.direct, c.gateway
    mark = "" if c.stream else ("  PASS" if (g.gateway_cpu_us or 0) <= TARGET_CPU_US else "  MISS")
    return (f"{'yes' if c.stream else 'no':>6} {c.delay_ms:>5} {c.concurrency:>4} {d.requests:>5} | "
            f"{d.rps:>10.0f} {d.p50_ms:>6.2f} {d.p99_ms:>6.2f} | "
            f"{g.rps:>7.0f} {g.p50_ms:>6.2f} {g.p99_ms:>6.2f} | "
            f"{c.added_p50_ms:>9.2f} {c.added_p99_ms:>6.2f} | {g.gateway_cpu_us or 0:>7.0f} "
            f"{g.upstream_cpu_us:>7.0f} {g.client_cpu_us:>7.0f}{mark}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summary(cells: list[Cell], startup: list[float], idle_rss: float, loaded_rss: float) -> list[str]:
    out: list[str] = []
    plain = [c for c in cells if not c.stream]
    worst = max(plain, key=lambda c: c.gateway.gateway_cpu_us or 0.0)
    cpu = [c.gateway.gateway_cpu_us or 0.0 for c in plain]
    out.append(f"gateway CPU per non-streaming request: median {statistics.median(cpu):.0f} us, worst "
               f"{max(cpu):.0f} us (delay {worst.delay_ms} ms, conc {worst.concurrency}); "
               f"target <= {TARGET_CPU_US:.0f} us in every cell: {verdict(max(cpu) <= TARGET_CPU_US)}")
    streamed = [c.gateway.gateway_cpu_us or 0.0 for c in cells if c.stream]
    if streamed:
        med = statistics.median(streamed)
        out.append(f"gateway CPU per streamed request ({STREAM_CHUNKS} chunks): median {med:.0f} us, "
                   f"~{med / STREAM_CHUNKS:.0f} us per chunk all included (no target)")
    sys_share = sum(c.gateway.gateway_sys_us or 0.0 for c in cells) / max(
        sum(c.gateway.gateway_cpu_us or 0.0 for c in cells), 1e-9)
    out.append(f"kernel (system) share of the gateway's CPU: {100 * sys_share:.0f}%; the rest is user space")
    for c in cells:
        if c.delay_ms == 50 and c.concurrency == 16:
            kind = "streaming" if c.stream else "non-streaming"
            out.append(f"added p99 at conc 16, 50 ms upstream, {kind}: {c.added_p99_ms:.2f} ms "
                       f"(added p50 {c.added_p50_ms:.2f} ms); target <= {TARGET_ADDED_P99_MS:.0f} ms: "
                       f"{verdict(c.added_p99_ms <= TARGET_ADDED_P99_MS)}")
    med = statistics.median(startup)
    runs = ", ".join(f"{s:.2f}" for s in startup)
    out.append(f"start-up (spawn -> /healthz 200, no litellm provider): median {med:.2f} s over "
               f"{len(startup)} ({runs}); target <= {TARGET_STARTUP_S:.0f} s: "
               f"{verdict(med <= TARGET_STARTUP_S)}")
    out.append(f"idle RSS after start-up: {idle_rss:.1f} MiB; target <= {TARGET_RSS_MB:.0f} MB: "
               f"{verdict(idle_rss <= TARGET_RSS_MB)}   (after the load: {loaded_rss:.1f} MiB)")
    up = [c.direct.upstream_cpu_us for c in plain]
    out.append(f"fake upstream's own CPU per request (direct runs), for context: non-streaming median "
               f"{statistics.median(up):.0f} us, streaming median "
               f"{statistics.median([c.direct.upstream_cpu_us for c in cells if c.stream] or [0]):.0f} us")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="measured requests per cell and path")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests before each run (at most)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=list(CONCURRENCY),
                   help="comma-separated, default 1,16,64")
    p.add_argument("--cell-budget-s", type=float, default=10.0,
                   help="cap on a 50 ms cell's run time: fewer requests at low concurrency")
    p.add_argument("--startup-runs", type=int, default=3,
                   help="gateway starts timed (the first is the one loaded)")
    p.add_argument("--idle-s", type=float, default=3.0, help="seconds the idle gateway's CPU is watched")
    p.add_argument("--quick", action="store_true", help="a small smoke run (< 30 s)")
    p.add_argument("--json", action="store_true", help=f"also write {OUT.relative_to(REPO)}")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.cell_budget_s, args.startup_runs, args.idle_s = 100, 10, 1.0, 1, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop  # the client shares the cores: keep it cheap
    except ImportError:
        pass
    print(f"Flywheel gateway overhead  ({os.cpu_count()} cores shared by the load generator, two fake "
          f"upstreams and the gateway; load average at start {os.getloadavg()[0]:.2f})")
    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            upstreams: dict[int, Service] = {}
            for delay in DELAYS_MS:
                upstreams[delay] = start_upstream(delay, tmp)
                services.append(upstreams[delay])
            config = write_config(tmp, upstreams)
            gateway, first = start_gateway(config, tmp, "main")
            services.append(gateway)
            startup = [first]
            for i in range(1, args.startup_runs):
                extra, t = start_gateway(config, tmp, f"startup{i}")
                extra.stop()
                startup.append(t)
            time.sleep(1.0)  # let lifespan tasks settle before reading RSS
            idle_rss = rss_mb(gateway.pid)
            idle_cpu = idle_cpu_ms_per_s(gateway.pid, args.idle_s)
            print(f"gateway pid {gateway.pid} up in {first:.2f} s, idle RSS {idle_rss:.1f} MiB, idle CPU "
                  f"{idle_cpu:.1f} ms/s (background tasks; counted in every cell's CPU); "
                  f"requests per cell {args.requests} (50 ms cells capped to ~{args.cell_budget_s:g} s)\n")
            print(HEADER, flush=True)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                cells = runner.run(run_cells(args, upstreams, gateway))
            loaded_rss = rss_mb(gateway.pid)
        finally:
            for svc in reversed(services):
                svc.stop()
    print("\nPASS/MISS on a row: gateway CPU per non-streaming request vs the 700 us target.")
    print("\n".join(summary(cells, startup, idle_rss, loaded_rss)))
    print(f"load average at end {os.getloadavg()[0]:.2f}  (other jobs on the machine skew latency and CPU)")
    print(CONTEXT)
    if args.json:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        doc = {"cells": [{**asdict(c), "added_p50_ms": c.added_p50_ms, "added_p99_ms": c.added_p99_ms}
                         for c in cells],
               "startup_s": startup, "idle_cpu_ms_per_s": idle_cpu, "idle_rss_mib": idle_rss,
               "loaded_rss_mib": loaded_rss,
               "requests": args.requests, "cpu_count": os.cpu_count()}
        OUT.write_text(json.dumps(doc, indent=2))
        print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
