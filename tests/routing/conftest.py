"""A gateway with a learned route over two in-process fake models: `cheap` fails "hard" requests."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _key(k: str) -> str:
    return k if k.replace("-", "").replace("_", "").isalnum() else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: dict[str, Any]) -> str:
    """A config dict as TOML: two levels of tables (`[routes.smart]`), deeper values inline."""
    lines: list[str] = []
    for section, body in cfg.items():
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) or section not in _NESTED}
        if scalars:
            lines.append(f"[{_key(section)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
        for name, table in body.items():
            if isinstance(table, dict) and section in _NESTED:
                lines.append(f"[{_key(section)}.{_key(name)}]")
                lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


_NESTED = ("providers", "models", "routes")


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    """Write `cfg` to `path` and move its mtime forward, so the gateway's watcher sees a change."""
    path.write_text(to_toml(cfg), encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
