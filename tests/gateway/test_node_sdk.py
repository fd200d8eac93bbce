"""The official openai npm SDK (tests/node, installed by `make install` where npm exists) against
the gateway in front of a real fake upstream: chat, a stream with usage, tools, json_schema,
embeddings in the SDK's default base64 and in float, models, and its NotFoundError."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import base_config

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "openai").is_dir(),
    reason="needs node and `npm ci --prefix tests/node` (make install runs it where npm exists)",
)


def test_the_npm_sdk_does_not_notice(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    gw = make_gateway(base_config(fake_upstream, tmp_path))
    run = subprocess.run(["node", str(NODE_DIR / "client.mjs"), gw.v1], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["chat"]["content"] == "You said: hello there" and out["chat"]["id"].startswith("chatcmpl-")
    assert out["stream"]["content"] == "You said: hello there" and out["stream"]["chunks"] > 2
    assert out["stream"]["total_tokens"] > 0
    assert out["tool"]["name"] == "get_weather" and isinstance(out["tool"]["arguments"]["city"], str)
    assert isinstance(out["json_schema"]["name"], str)
    emb = out["embeddings"]
    assert len(emb["base64"]) == len(emb["float"]) > 0
    assert emb["base64"] == pytest.approx(emb["float"], rel=1e-6)  # float32 on the wire
    assert {"bot", "model-a"} <= set(out["models"])
    assert out["not_found"] == {"is_not_found": True, "status": 404, "code": "model_not_found"}
