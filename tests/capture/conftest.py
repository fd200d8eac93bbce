"""Helpers for the capture tests: store polling from a test thread, gateway subprocesses, a
throw-away PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from gateway.store import open_store
from gateway.store.base import Store
from tests.conftest import free_port

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("FLYWHEEL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pseudonym(gw: Any, user: str) -> str:
    """How the gateway `gw` (a RunningGateway) stores the end-user id `user` (a keyed hash)."""
    pseudo = gw.gateway.preparer.pseudonymizer()
    return user if pseudo is None else str(pseudo.user(user))


def with_store(url: str, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run `fn(store)` on a fresh connection to the store at `url` (from synchronous test code)."""

    async def run() -> T:
        store = open_store(url)
        try:
            await store.migrate()
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def poll_store(url: str, fn: Callable[[Store], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 15.0) -> T:
    """Evaluate `fn(store)` until `ok(value)` (bounded); returns the last value either way."""

    async def run() -> T:
        store = open_store(url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                value = await fn(store)
                if ok(value) or time.monotonic() > deadline:
                    return value
                await asyncio.sleep(0.05)
        finally:
            await store.close()

    return asyncio.run(run())


@dataclass
class Proc:
    """A child process serving HTTP on a loopback port."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_up(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.url}{path} did not come up:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def spawn(args: list[str], log: Path) -> Proc:
    """`python <args> --port P` from the repository root, output to `log`."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args, "--port", str(port)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return Proc(proc, port, log)


@pytest.fixture
def processes() -> Iterator[Callable[[list[str], Path, str], Proc]]:
    """Factory: start a child process and wait until `path` answers 200; all are stopped afterwards."""
    started: list[Proc] = []

    def start(args: list[str], log: Path, path: str) -> Proc:
        p = spawn(args, log)
        started.append(p)
        p.wait_up(path)
        return p

    yield start
    for p in reversed(started):
        p.stop(10)


def write_config(path: Path, store_url: str, spill: Path, upstream: str, **extra: Any) -> Path:
    """A minimal config.toml: one fake OpenAI-compatible upstream, route `bot`, learners off."""
    lines = ["[store]", f'url = "{store_url}"', f'spill_path = "{spill}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    lines += ["", "[learners]", "enabled = false", "",
              "[providers.up]", 'kind = "openai"', f'base_url = "{upstream}"', "",
              "[models.m]", 'provider = "up"', 'name = "fake-m"',
              "price = { input_per_mtok = 1.0, output_per_mtok = 2.0 }", "",
              "[routes.bot]", 'variants = ["m"]', ""]
    path.write_text("\n".join(lines))
    return path


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a uniquely named PostgreSQL database, dropped afterwards (skips when unreachable)."""
    name = f"flywheel_capture_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e}")
    yield urlsplit(PG_URL)._replace(path=f"/{name}", query="").geturl()
    for _ in range(20):  # the server may be restarting after a durability test
        try:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except (OSError, asyncpg.PostgresError, TimeoutError):
            time.sleep(0.5)
