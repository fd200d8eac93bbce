"""What every chaos drill shares: a gateway subprocess on loopback with its own config, the fake
upstream, a throwaway PostgreSQL cluster, the client that sends calls and feedback and remembers
what was acknowledged, the stall probe, and the counts read back from the store afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bench.loadgen import Service, free_port, spawn, wait_http
from gateway.store import open_store

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DrillResult:
    """One drill on one backend: what was sent, what the store holds, and what it cost."""

    drill: str
    backend: str
    sent: int = 0  # calls acknowledged with a call id (answered, or failed and logged)
    rows: int = 0  # of those, stored
    fb_sent: int = 0  # feedback acknowledged (201/202)
    fb_found: int = 0
    duplicates: int = 0
    stall_ms: float = 0.0  # worst extra latency of the probe requests during the drill
    peak_rss_mib: float = 0.0
    passed: bool | None = None  # None: skipped
    allowed_loss: int = 0  # a documented bound (hard kill: the batch window)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(0, self.sent - self.rows) + max(0, self.fb_sent - self.fb_found)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"    {self.drill}/{self.backend}: {text}", flush=True)

    def check(self, ok: bool, what: str) -> None:
        """Record one acceptance check; the drill passes only if all of them held."""
        if not ok:
            self.passed = False
            self.note(f"FAILED: {what}")
        elif self.passed is None:
            self.passed = True


@dataclass
class Backend:
    name: str  # sqlite | postgres
    url_for: Any  # (tmp dir, drill name) -> store URL
    cluster: Any = None  # the throwaway PostgreSQL cluster (postgres only)


def config_text(store_url: str, spill: Path, upstream_port: int, *, server: dict[str, Any] | None = None,
                store: dict[str, Any] | None = None, retries: dict[str, Any] | None = None,
                routes: tuple[str, ...] = ("r",), learners: bool = False, privacy: dict[str, Any] | None = None,
                extra: str = "") -> str:
    """A config.toml: one OpenAI-compatible provider (the fake upstream), model `m`, the given routes."""

    def table(name: str, values: dict[str, Any]) -> list[str]:
        return [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]

    lines = table("server", {"reload_interval_s": 0.5, **(server or {})})
    lines += table("store", {"url": store_url, "spill_path": str(spill), "flush_ms": 200, **(store or {})})
    lines += table("retries", {"attempts": 2, "initial_delay_s": 0.05, "max_delay_s": 0.5, "attempt_timeout_s": 10,
                               "deadline_s": 15, **(retries or {})})
    lines += table("providers.up", {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1"})
    lines += table("models.m", {"provider": "up", "name": "fake-m"})
    for r in routes:
        lines += table(f"routes.{r}", {"variants": ["m"]})
    lines += table("learners", {"enabled": learners, **({"embedder": "hashing", "interval_s": 2,
                                                         "min_new_feedback": 1} if learners else {})})
    if privacy:
        lines += table("privacy", privacy)
    return "\n".join(lines) + extra


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return orjson.dumps(v).decode()
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


class GatewayProc:
    """`python -m flywheel.cli --config X serve --port P` as a child process."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.log = config, log
        self.port = free_port()
        self.svc: Service = spawn(["-m", "flywheel.cli", "--config", str(config), "serve", "--port", str(self.port)],
                                  port=self.port, log_path=log, cwd=REPO, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 60) -> float:
        return wait_http(self.svc, "/healthz", timeout_s)

    def peak_rss_mib(self) -> float:
        """VmHWM: the most resident memory the process ever had."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.svc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mib(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.svc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def terminate(self, timeout_s: float = 60) -> int | None:
        """SIGTERM and wait (graceful: drains the writer); SIGKILL after `timeout_s`."""
        if self.svc.proc.poll() is None:
            self.svc.proc.send_signal(signal.SIGTERM)
            try:
                self.svc.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.svc.proc.kill()
                self.svc.proc.wait(10)
        return self.svc.proc.returncode

    def kill(self) -> None:
        if self.svc.proc.poll() is None:
            self.svc.proc.kill()
            self.svc.proc.wait(10)

    def log_lines(self) -> list[str]:
        """Log records (a traceback's lines belong to the record before them)."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if line[:1].isdigit()]


class Client:
    """Sends calls and feedback to one gateway and remembers every acknowledged id."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.call_ids: list[str] = []  # every response that carried x-flywheel-call-id (the call is logged)
        self.feedback_ids: list[str] = []
        self.statuses: dict[int, int] = {}
        self.transport_errors = 0
        self.resets = 0  # of those, requests sent on a connection and cut off (not "connection refused")

    def _count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    async def chat(self, route: str, content: str = "hi", *, user: str | None = None, timeout: float = 60,
                   **body: Any) -> tuple[int, str | None]:
        payload = {"model": route, "messages": [{"role": "user", "content": content}], **body}
        if user is not None:
            payload["user"] = user
        return await self.post_chat(orjson.dumps(payload), timeout)

    async def post_chat_from_thread(self, data: bytes, timeout: float = 120) -> tuple[int, str | None]:
        """`post_chat` for a huge body, sent from a worker thread with blocking sockets (which release
        the interpreter lock): writing megabytes on this event loop would delay the stall probe that
        shares it, and that delay would be counted as the gateway's stall."""
        def post() -> tuple[int, str | None]:
            url = urlsplit(self.base)
            conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
            try:
                conn.request("POST", "/v1/chat/completions", body=data, headers={"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                return r.status, r.getheader("x-flywheel-call-id")
            finally:
                conn.close()

        try:
            status, call_id = await asyncio.to_thread(post)
        except OSError:
            self.transport_errors += 1
            return 0, None
        self._count(status)
        if call_id:
            self.call_ids.append(call_id)
        return status, call_id

    async def post_chat(self, data: bytes, timeout: float = 60) -> tuple[int, str | None]:
        try:
            async with self.session.post(self.base + "/v1/chat/completions", data=data, timeout=timeout,
                                         headers={"content-type": "application/json"}) as r:
                await r.read()
                call_id = r.headers.get("x-flywheel-call-id")
                self._count(r.status)
                if call_id:
                    self.call_ids.append(call_id)
                return r.status, call_id
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.transport_errors += 1
            if not isinstance(exc, aiohttp.ClientConnectorError):
                self.resets += 1
            return 0, None

    async def feedback(self, call_id: str, **fields: Any) -> int:
        try:
            async with self.session.post(self.base + "/v1/feedback", timeout=30,
                                         json={"call_id": call_id, "rating": 1, **fields}) as r:
                data = await r.read()
                if r.status in (200, 201, 202):
                    self.feedback_ids.append(orjson.loads(data).get("id", ""))
                return r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.transport_errors += 1
            if not isinstance(exc, aiohttp.ClientConnectorError):
                self.resets += 1
            return 0

    async def ready(self) -> dict[str, Any]:
        async with self.session.get(self.base + "/readyz", timeout=10) as r:
            return dict(orjson.loads(await r.read()))


@contextlib.asynccontextmanager
async def session(limit: int = 256) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False)) as s:
        yield s


class StallProbe:
    """GET /healthz every 10 ms in the background; the worst latency above the median is the stall
    the other requests saw (the event loop held by something else)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.latencies: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.get(self.base + "/healthz", timeout=30) as r:
                    await r.read()
            self.latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        """The worst stall in ms (max latency minus median)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return (ordered[-1] - ordered[len(ordered) // 2]) * 1000


async def count_rows(store_url: str, call_ids: list[str], feedback_ids: list[str], route: str | None = None,
                     wait_s: float = 30) -> tuple[int, int, int]:
    """(calls found, feedback found, feedback duplicates) for the acknowledged ids, polling up to
    `wait_s` for rows still on their way (spills re-ingested, held rows flushed)."""
    store = open_store(store_url)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            with contextlib.suppress(Exception):
                await store.migrate()
                found_calls = 0
                for cid in set(call_ids):
                    if await store.get_call(cid) is not None:
                        found_calls += 1
                fbs = await store.list_feedback(call_ids=list(set(call_ids))) if call_ids else []
                by_id: dict[str, int] = {}
                for fb in fbs:
                    by_id[fb.id] = by_id.get(fb.id, 0) + 1
                found_fb = sum(1 for fid in set(feedback_ids) if fid in by_id)
                dups = sum(n - 1 for n in by_id.values() if n > 1)
                if (found_calls >= len(set(call_ids)) and found_fb >= len(set(feedback_ids))) \
                        or time.monotonic() > deadline:
                    return found_calls, found_fb, dups
            if time.monotonic() > deadline:
                return 0, 0, 0
            await asyncio.sleep(1.0)
    finally:
        with contextlib.suppress(Exception):
            await store.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
