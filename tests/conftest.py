"""Shared fixtures: a real fake-upstream process and a real gateway server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
import uvicorn

from flywheel.app import create_app
from gateway.config.settings import Settings, parse_settings
from gateway.server import Gateway
from gateway.store.base import Store
from learners.loop import LearningLoop

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    """Base URL (…/v1) of a fake OpenAI-compatible upstream running in its own process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.providers.fakes.server", "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def script(upstream: str, model: str, *steps: dict[str, Any]) -> None:
    """Make the fake upstream misbehave for the next requests naming `model`."""
    httpx.post(upstream.removesuffix("/v1") + "/_control/script", json={"model": model, "steps": list(steps)})


def received(upstream: str, model: str) -> list[dict[str, Any]]:
    """Bodies the fake upstream received for `model`."""
    r = httpx.get(upstream.removesuffix("/v1") + "/_control/requests", params={"model": model})
    return list(r.json())


@dataclass
class RunningGateway:
    url: str  # http://127.0.0.1:PORT
    gateway: Gateway
    learning: LearningLoop
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_gateway(settings: Settings, config_path: Path | None = None) -> RunningGateway:
    """Serve the gateway with uvicorn in a background thread (its own event loop)."""
    app = create_app(settings, config_path=config_path)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", loop="asyncio"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    return RunningGateway(f"http://127.0.0.1:{port}", app.state.gateway, app.state.learning, server, thread)


def base_config(upstream: str, tmp: Path, **overrides: Any) -> dict[str, Any]:
    """A config with one OpenAI-compatible provider (the fake upstream) and a few models."""
    cfg: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp}/flywheel.db", "spill_path": str(tmp / "spill.jsonl"), "flush_ms": 10,
                  "journal_dir": str(tmp / "journal")},
        "retries": {"attempts": 3, "initial_delay_s": 0.01, "max_delay_s": 0.5, "attempt_timeout_s": 5,
                    "deadline_s": 20},
        "providers": {"up": {"kind": "openai", "base_url": upstream}},
        "models": {
            "model-a": {"provider": "up", "name": "a", "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
            "model-b": {"provider": "up", "name": "b", "price": {"input_per_mtok": 10.0, "output_per_mtok": 20.0}},
            "embed": {"provider": "up", "name": "embed-1"},
        },
        "routes": {"bot": {"variants": ["model-a"], "fallbacks": ["model-b"]}},
        "learners": {"enabled": False},
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Any]:
    """Factory: start a gateway from a config dict; every gateway started is stopped afterwards."""
    running: list[RunningGateway] = []

    def make(cfg: dict[str, Any], config_path: Path | None = None) -> RunningGateway:
        gw = start_gateway(parse_settings(cfg), config_path)
        running.append(gw)
        return gw

    yield make
    for gw in running:
        gw.stop()


def poll_store(gw: RunningGateway, get: Callable[[Store], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """What `get(store)` finds in the gateway's store, once the batched writer has written it."""
    import asyncio

    from gateway.store import open_store

    async def poll() -> Any:
        store = open_store(gw.gateway.settings.store.url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                found = await get(store)
                if found is not None:
                    return found
                await asyncio.sleep(0.02)
            raise AssertionError(f"{what} was never written")
        finally:
            await store.close()

    return asyncio.run(poll())


def fetch_call(gw: RunningGateway, call_id: str, timeout: float = 10.0) -> Any:
    """The stored CallRecord for `call_id`, once the batched writer has written it."""
    return poll_store(gw, lambda store: store.get_call(call_id), f"call {call_id}", timeout)


def write_toml(cfg: dict[str, Any], path: Path) -> Path:
    """Write a config dict as config.toml and move its mtime forward, so a watching gateway
    sees the change even within the file system's timestamp granularity."""
    path.write_bytes(tomli_w.dumps(cfg).encode())
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    return path
