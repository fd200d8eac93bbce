"""A seed template file edited after the first start becomes a new hand-authored version that
goes through the evaluation gate (it is not promoted at once, and not ignored)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.config.settings import load_settings
from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.records import ArtifactRecord


def versions(url: str) -> list[ArtifactRecord]:
    async def read() -> list[ArtifactRecord]:
        store = open_store(url)
        try:
            await store.migrate()
            return await ArtifactRegistry(store).list_versions("bot", "template")
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for(cond: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_an_edited_seed_file_is_published_through_the_gate(make_gateway: Any, fake_upstream: str,
                                                            tmp_path: Path) -> None:
    (tmp_path / "seed.md").write_text("Answer politely.")
    path = tmp_path / "config.toml"
    path.write_text(f"""
[store]
url = "sqlite:///f.db"
flush_ms = 10
[providers.up]
kind = "openai"
base_url = "{fake_upstream}"
[models.a]
provider = "up"
name = "a"
[routes.bot]
variants = ["a"]
template = "seed.md"
[learners]
enabled = true
interval_s = 3600
refresh_s = 0.2
embedder = "hashing"
""")
    settings = load_settings(path)
    gw = make_gateway(settings.model_dump(), config_path=path)
    first = wait_for(lambda: versions(settings.store.url))
    assert [v.version for v in first] == ["t0"]
    (tmp_path / "seed.md").write_text("Answer politely, in one sentence.")
    edited = wait_for(lambda: [v for v in versions(settings.store.url) if v.produced_by == "person:seed-file"])
    assert len(edited) == 1 and edited[0].parent == "t0"
    assert edited[0].state in ("candidate", "canary", "rejected")  # gated: never promoted straight away
    time.sleep(1.0)  # later refreshes do not publish the same text again
    assert len(versions(settings.store.url)) == 2
    assert gw.gateway.serving.current("bot").template is not None
