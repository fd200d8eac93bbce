"""ArtifactServer.refresh (gateway/serve/artifacts.py): overlapping refreshes of one route end with
what the store holds now, never with the older reading of the one that started first."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config.settings import parse_settings
from gateway.serve.artifacts import ArtifactServer
from gateway.serve.augment import Augmenter
from gateway.serve.embedder import EmbedderHolder
from gateway.serve.templating import Template
from gateway.store import open_store
from gateway.store.artifacts import Manifest


async def test_a_refresh_that_read_before_a_promotion_does_not_install_its_older_states_last(tmp_path: Path) -> None:
    settings = parse_settings({"providers": {"p": {"kind": "fake"}}, "models": {"m": {"provider": "p", "name": "m"}},
                               "routes": {"bot": {"variants": ["m"]}}})
    store = open_store(f"sqlite:///{tmp_path}/a.db")
    await store.migrate()
    embedders = EmbedderHolder(lambda: "hashing")
    server = ArtifactServer(lambda: store, Augmenter(lambda: settings, embedders.embed_fn), embedders,
                            lambda: settings, tmp_path)
    reg = server.registry
    for v in ("t1", "t2"):
        await reg.save_candidate("bot", "template", Template(f"Say {v}.").to_body(), Manifest(produced_by="test"),
                                 version=v)
    await reg.move("bot", "template", "t1", "promoted", "first")
    read, release = asyncio.Event(), asyncio.Event()
    real_states = reg.all_states

    async def held_states(route: str) -> Any:  # the real read, answered once t2 is promoted
        states = await real_states(route)
        read.set()
        await release.wait()
        return states

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(reg, "all_states", held_states)
            periodic = asyncio.create_task(server.refresh("bot"))
            await read.wait()
        await reg.move("bot", "template", "t2", "promoted", "better")
        after_promotion = asyncio.create_task(server.refresh("bot"))  # a learner's, right after its move
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(periodic, after_promotion)
        assert server.current("bot").template is not None
        assert server.current("bot").template.version == "t2"
    finally:
        await store.close()
