"""The per-drill context: backend, scratch directory, upstream, and the usual start/measure/count steps."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.chaos.harness import Client, DrillResult, GatewayProc, config_text, count_rows, unique


@dataclass
class DrillContext:
    backend: str  # sqlite | postgres
    root: Path  # scratch directory of this drill
    upstream_port: int
    cluster: Any = None  # tests.pg_throwaway.ThrowawayCluster when backend == "postgres"
    soak_minutes: float = 1.0
    data_dir: Path | None = None  # where the last config written put the SQLite file and the spill
    started: list[GatewayProc] = field(default_factory=list)  # killed if the drill crashes or times out

    def store_url(self, data_dir: Path | None = None) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{(data_dir or self.data_dir or self.root)}/flywheel.db"
        assert self.cluster is not None
        return self.cluster.url

    def result(self, drill: str) -> DrillResult:
        return DrillResult(drill, self.backend)

    def write_config(self, name: str = "config.toml", *, data_dir: Path | None = None, **kw: Any) -> Path:
        data = data_dir or self.root
        self.data_dir = data
        path = self.root / name
        path.write_text(config_text(self.store_url(data_dir), data / "spill.jsonl", self.upstream_port, **kw))
        return path

    def start(self, config: Path, tag: str = "gw", ready: bool = True) -> GatewayProc:
        gw = GatewayProc(config, self.root / f"{tag}.log")
        self.started.append(gw)
        if ready:
            gw.wait_ready()
        return gw

    async def script(self, model: str, *steps: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{self.upstream_port}/_control/script",
            data=orjson.dumps({"model": model, "steps": list(steps)})):
            pass

    async def finish(self, res: DrillResult, gw: GatewayProc, client: Client, *, stop: bool = True,
                     wait_s: float = 30) -> DrillResult:
        """Stop the gateway (SIGTERM drains it), then count the acknowledged rows in the store."""
        res.peak_rss_mib = max(res.peak_rss_mib, gw.peak_rss_mib())
        if stop:
            code = gw.terminate()
            if code not in (0, None, -signal.SIGTERM):  # uvicorn re-raises SIGTERM once drained
                res.note(f"gateway exited with status {code}")
        res.sent, res.fb_sent = len(set(client.call_ids)), len(set(client.feedback_ids))
        res.rows, res.fb_found, res.duplicates = await count_rows(self.store_url(), client.call_ids,
                                                                  client.feedback_ids, wait_s=wait_s)
        res.check(res.lost <= res.allowed_loss, f"{res.lost} lost (allowed {res.allowed_loss})")
        res.check(res.duplicates == 0, f"{res.duplicates} duplicate feedback rows")
        return res


async def settle(client: Client, timeout_s: float = 90) -> str:
    """Wait until /readyz says ready (the store is back and spilled rows re-ingested); its last status."""
    deadline = time.monotonic() + timeout_s
    status = "?"
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            ready = await client.ready()
            status = str(ready.get("status"))
            writer = ready.get("writer") or {}
            pending = int(writer.get("spilled", 0)) - int(writer.get("reingested", 0))
            if status == "ready" and pending <= 0:
                return status
            status += f" ({pending} spilled rows not yet re-ingested)" if pending > 0 else ""
        await asyncio.sleep(1.0)
    return status


async def steady(client: Client, route: str, n: int, rate: float, *, feedback_every: int = 0,
                 content: str = "hi", user: str | None = None, concurrency: int = 16, users: bool = False) -> None:
    """`n` calls at about `rate` per second (bounded concurrency), feedback on every k-th answer;
    `users`: each call from a user of its own (per-user state must not grow without bound)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            who = f"user-{uuid.uuid4().hex[:12]}" if users else user
            status, call_id = await client.chat(route, f"{content} {i}", user=who)
            if feedback_every and call_id and status == 200 and i % feedback_every == 0:
                await client.feedback(call_id)

    tasks = []
    started = time.monotonic()
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        delay = started + (i + 1) / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*tasks)


def new_route() -> str:
    return unique("r")


@contextlib.contextmanager
def suppressed() -> Any:
    with contextlib.suppress(Exception):
        yield
