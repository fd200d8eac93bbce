"""`flywheel serve` logs one structured line per event: the address at start, a reload (with a
restart needed for a new port), and nothing per request at INFO, not even litellm's own lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]


def config_text(upstream: str, tmp: Path, port: int) -> str:
    return f"""
[server]
port = {port}
reload_interval_s = 0.1
log_format = "json"
[store]
url = "sqlite:///data/f.db"
flush_ms = 10
[providers.native]
kind = "openai"
base_url = "{upstream}"
[providers.viallm]
kind = "litellm"
base_url = "{upstream}"
api_key_env = "FW_TEST_KEY"
[models.a]
provider = "native"
name = "a"
[models.b]
provider = "viallm"
name = "openai/b"
[routes.bot]
variants = ["a"]
[learners]
enabled = false
embedder = "hashing"
"""


def read_lines(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    assert proc.stderr is not None
    return [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]


def test_serve_logs_events_not_requests(fake_upstream: str, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(config_text(fake_upstream, tmp_path, port))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FW_TEST_KEY": "sk-test"}
    for name in ("FLYWHEEL_HOST", "FLYWHEEL_PORT", "FLYWHEEL_LOG_FORMAT", "FLYWHEEL_LOG_LEVEL", "LITELLM_LOG"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "serve", "--config", str(cfg)], cwd=tmp_path,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", timeout=60)
        for model in ("bot", "b", "bot", "b"):
            r = httpx.post(url + "/v1/chat/completions", timeout=30,
                           json={"model": model, "messages": [{"role": "user", "content": "marker-question"}]})
            assert r.status_code == 200, r.text
        cfg.write_text(config_text(fake_upstream, tmp_path, port + 1))
        time.sleep(1.5)  # the reload interval is 0.1 s
    finally:
        proc.terminate()
        proc.wait(30)
    lines = read_lines(proc)  # every line is one JSON object
    start = [x for x in lines if x.get("event") == "start"]
    assert len(start) == 1 and start[0]["port"] == port and f"http://127.0.0.1:{port}" in start[0]["msg"]
    assert any(x.get("event") == "config_reload" for x in lines)
    restart = [x for x in lines if x.get("event") == "restart_needed"]
    assert restart and f"127.0.0.1:{port + 1}" in restart[0]["msg"] and restart[0]["level"] == "warning"
    infos = [x for x in lines if x["level"] in ("info", "debug")]
    assert not [x for x in infos
                if "marker-question" in x["msg"] or x["logger"].lower().startswith(("litellm", "httpx"))]
    assert len(infos) <= 6, infos  # start, reload, store migrations...: a handful, whatever the traffic
    assert (tmp_path / "data" / "f.db").exists()  # the store path resolved against config.toml's directory
