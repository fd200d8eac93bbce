"""A bounded, closed-loop HTTP load generator, and the helpers to run what it is aimed at.

`concurrency` workers share one pooled keep-alive aiohttp session and take request numbers
from a shared counter until `requests` have been sent, so a run is a fixed amount of work
(not a fixed duration) and its CPU cost can be divided by the number of requests.

It shares the machine's cores with what it measures, so it does as little as it can per
request: the body is encoded once, responses are read as bytes and never parsed, and the
only bookkeeping is a latency float and a status count.

    from bench.loadgen import run_load
    result = await run_load("http://127.0.0.1:8080/v1/chat/completions", body,
                            requests=2000, concurrency=16, stream=True)
    print(result.rps, result.percentile_ms(99), result.statuses)

The servers under test run as child processes (`spawn`, `wait_http`) so their CPU time and
memory can be read from /proc (`cpu_times`, `rss_mib`) without counting the client's.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import math
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

TRANSPORT_ERROR = 0  # the status recorded when no HTTP response arrived (reset, timeout, refused)


@dataclass(frozen=True)
class LoadResult:
    """What one bounded run measured. Latencies are in seconds, one per request, in finish order."""

    requests: int
    concurrency: int
    stream: bool
    elapsed_s: float
    latencies_s: list[float]
    ttfb_s: list[float]  # time to the first body bytes: for streams, the first chunk
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count; 0 = transport error
    error_samples: list[str] = field(default_factory=list)  # a few error texts, for diagnosis

    @property
    def rps(self) -> float:
        """Completed requests per second of wall time."""
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> int:
        """Requests answered with a 2xx status."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def failed(self) -> int:
        """Requests that ended with a non-2xx status or no response at all."""
        return len(self.latencies_s) - self.ok

    def percentile_ms(self, p: float, *, ttfb: bool = False) -> float:
        """The p-th percentile (nearest rank) of latency, or of time to first byte, in ms."""
        return percentile(self.ttfb_s if ttfb else self.latencies_s, p) * 1000


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of `values` (0 <= p <= 100); NaN for an empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def make_session(concurrency: int, timeout_s: float = 60.0) -> aiohttp.ClientSession:
    """A session whose pool holds one keep-alive connection per worker."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, keepalive_timeout=60,
                                     enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 skip_auto_headers=("User-Agent",))


async def run_load(
    url: str,
    body: Any,
    *,
    requests: int,
    concurrency: int,
    stream: bool = False,
    headers: Mapping[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    timeout_s: float = 60.0,
) -> LoadResult:
    """POST `body` (JSON-able, or bytes sent as-is) to `url` `requests` times, `concurrency` at a time.

    A list of bodies is sent in turn (request i gets `body[i % len(body)]`), so that a server
    that caches by content sees as many distinct requests as the list holds.

    With `stream`, each response is consumed chunk by chunk as it arrives (the body must ask
    the server to stream). A given `session` is reused (and left open); otherwise one is
    made and closed. Never raises for a failed request: failures are counted in `statuses`.
    """
    if requests < 0 or concurrency < 1:
        raise ValueError("requests must be >= 0 and concurrency >= 1")
    bodies = body if isinstance(body, list) else [body]
    datas = [b if isinstance(b, bytes) else orjson.dumps(b) for b in bodies]
    hdrs = {"content-type": "application/json", **(headers or {})}
    own = session is None
    sess = session if session is not None else make_session(concurrency, timeout_s)
    latencies: list[float] = []
    ttfb: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    ticket = itertools.count()
    clock = time.perf_counter

    async def one(i: int) -> None:
        data = datas[i % len(datas)]
        start = clock()
        first = math.nan
        status = TRANSPORT_ERROR
        try:
            async with sess.post(url, data=data, headers=hdrs) as resp:
                status = resp.status
                if stream and status < 400:
                    async for _ in resp.content.iter_any():
                        if first != first:  # NaN: nothing seen yet
                            first = clock()
                else:
                    raw = await resp.read()
                    first = clock()
                    if status >= 400 and len(errors) < 5:
                        errors.append(f"HTTP {status}: {raw[:200].decode('utf-8', 'replace')}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = TRANSPORT_ERROR
            if len(errors) < 5:
                errors.append(f"{exc.__class__.__name__}: {exc}")
        end = clock()
        latencies.append(end - start)
        ttfb.append((first if first == first else end) - start)
        statuses[status] += 1

    async def worker() -> None:
        while (i := next(ticket)) < requests:
            await one(i)

    began = clock()
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(requests, 1)))))
    finally:
        if own:
            await sess.close()
    return LoadResult(requests, concurrency, stream, clock() - began, latencies, ttfb, dict(statuses), errors)


# -- the processes under test ---------------------------------------------------------------------


@dataclass
class Service:
    """A child process serving HTTP on a loopback port; its output goes to `log_path`."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    spawned_at: float  # perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM (uvicorn and aiohttp shut down gracefully), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: Sequence[str], *, port: int, log_path: Path, cwd: Path | None = None,
          env: Mapping[str, str] | None = None) -> Service:
    """Start `python <args>` (this interpreter), stdout and stderr to `log_path`."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    return Service(proc, port, log_path, started)


def wait_http(svc: Service, path: str, timeout_s: float = 30.0) -> float:
    """Poll GET `path` until it answers 200; seconds since the spawn. Stops `svc` on failure."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"process exited ({svc.proc.returncode}):\n{svc.log_tail()}")
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
    svc.stop()
    raise RuntimeError(f"{path} on port {svc.port} did not answer within {timeout_s:g}s:\n{svc.log_tail()}")


def serve_flywheel(config: Path, port: int, log_path: Path, *, env: dict[str, str] | None = None,
                   timeout_s: float = 120.0) -> Service:
    """`flywheel serve` with `config` as a child process (from the repo root); waits for /healthz."""
    svc = spawn(["-m", "flywheel.cli", "--config", str(config), "serve"], port=port, log_path=log_path,
                cwd=Path(__file__).resolve().parents[1], env=env)
    wait_http(svc, "/healthz", timeout_s=timeout_s)
    return svc


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # fields 14 and 15 of proc(5)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    return sum(cpu_times(pid))


def processes_cpu_s(command: str) -> float:
    """CPU seconds of every visible process whose command name starts with `command` (e.g. the
    local PostgreSQL server's backends); 0.0 when there is none."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", encoding="utf-8", errors="replace") as f:
                if not f.read().startswith(command):
                    continue
            total += cpu_s(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return total


def idle_cpu_ms_per_s(pid: int, seconds: float) -> float:
    """CPU a process burns while nobody calls it, in ms per second of wall time."""
    before, t0 = cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_s(pid) - before) * 1000 / (time.perf_counter() - t0)


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB (/proc/<pid>/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan
