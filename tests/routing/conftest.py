"""A gateway with a learned route over two in-process fake models: `cheap` fails "hard" requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import write_toml

HARD = "integral"


def routing_config(tmp: Path, **policy: Any) -> dict[str, Any]:
    """Config dict: route `smart` (learned over cheap/strong), route `plain` (static cheap)."""
    table: dict[str, Any] = {"kind": "learned", "quality_metric": "rating", "explore": 0.0, "dims": 16,
                             "prior_quality": {"cheap": 0.6, "strong": 0.9}, "min_quality": 0.75}
    table.update(policy)
    return {
        "server": {"reload_interval_s": 0.05},
        "store": {"url": f"sqlite:///{tmp}/flywheel.db", "spill_path": str(tmp / "spill.jsonl"), "flush_ms": 10},
        "providers": {"cheapp": {"kind": "fake", "hard": [HARD]}, "strongp": {"kind": "fake"}},
        "models": {
            "cheap": {"provider": "cheapp", "name": "cheap-1",
                      "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
            "strong": {"provider": "strongp", "name": "strong-1",
                       "price": {"input_per_mtok": 20.0, "output_per_mtok": 40.0}},
        },
        "routes": {
            "smart": {"variants": ["cheap", "strong"], "fallbacks": ["strong"], "policy": table},
            "plain": {"variants": ["cheap"]},
        },
        "learners": {"enabled": False, "embedder": "hashing"},
        "privacy": {"store_raw": True},
    }


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    """Write `cfg` to `path` (the gateway watching it reloads)."""
    write_toml(cfg, path)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
