# ruff: noqa: F811 - the `store` fixture is imported (both backends) and named by the tests
"""A new canary opens at `canary_share`, or wider when its offline evaluation alone already makes
it likely better (so the feedback that decides it arrives sooner); the share is recorded where the
request path reads it."""

from __future__ import annotations

from typing import Any

from gateway.config.settings import LearnerSettings
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.sql import SqlStore
from learners.rollout import Rollout
from tests.store.conftest import pg_database, store, store_url  # noqa: F401 - fixtures over both backends

M = Manifest(produced_by="test", note="because")
CFG = LearnerSettings(canary_share=0.1, canary_max_share=0.5)


async def _begin(store: SqlStore, version: str, offline: dict[str, Any]) -> tuple[Any, float | None]:
    reg = ArtifactRegistry(store)
    await reg.save_candidate("bot", "index", {"v": version}, M, version=version, evaluation={"offline": offline})
    decision = await Rollout(reg, lambda: CFG).begin("bot", "index", version, "offline ok")
    return decision, (await reg.states("bot", "index")).versions[version].share


async def test_a_large_offline_gain_opens_the_canary_wide(store: SqlStore) -> None:
    decision, share = await _begin(store, "i1", {"n": 12, "current": 0.17, "candidate": 0.93, "delta": 0.76})
    assert decision.action == "canary" and decision.share == share == 0.5
    assert "offline evaluation's evidence" in decision.reason


async def test_a_tie_opens_at_the_configured_share(store: SqlStore) -> None:
    decision, share = await _begin(store, "i1", {"n": 12, "current": 0.5, "candidate": 0.5, "delta": 0.0})
    assert decision.action == "canary" and decision.share is None and share in (None, 0.1)
    decision, share = await _begin(store, "i2", {})  # queued behind i1: no share of its own yet
    assert decision.action == "queued"
