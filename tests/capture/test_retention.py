"""`[privacy] retention_days`: the background RetentionService, checked by row counts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.capture.retention import DAY_S, RetentionService
from gateway.config.settings import PrivacySettings
from gateway.store import open_store
from gateway.store.sql import SqlStore
from tests.capture.conftest import poll_store, with_store
from tests.conftest import base_config
from tests.store.factories import make_call, make_feedback

NOW = 1_800_000_000.0


class CountingStore:
    """A real store that records the batch size of each delete_older_than call."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def delete_older_than(self, ts: float, *, batch: int = 500) -> int:
        self.batches.append(batch)
        return await self.inner.delete_older_than(ts, batch=batch)


async def _fill(store: SqlStore, old: int, new: int, now: float) -> Sequence[str]:
    calls = [make_call(i, id=f"old-{i}", created_at=now - 40 * DAY_S + i) for i in range(old)]
    calls += [make_call(i, id=f"new-{i}", created_at=now - 10 * DAY_S + i) for i in range(new)]
    await store.insert_calls(calls)
    for c in calls[:: max(1, len(calls) // 50)]:
        await store.insert_feedback(make_feedback(c.id, created_at=c.created_at + 1))
    return [c.id for c in calls]


async def test_one_sweep_deletes_exactly_the_calls_past_the_window(tmp_path: Path) -> None:
    inner = open_store(f"sqlite:///{tmp_path}/r.db")
    assert isinstance(inner, SqlStore)
    await inner.migrate()
    try:
        await _fill(inner, old=1203, new=317, now=NOW)
        fb_before = await inner.count_feedback()
        store = CountingStore(inner)
        privacy = PrivacySettings(retention_days=30, retention_batch=100)
        svc = RetentionService(lambda: store, lambda: privacy, clock=lambda: NOW)
        assert await svc.sweep() == 1203
        assert store.batches == [100]  # bounded transactions: 100 calls each
        assert await inner.count_calls() == 317
        assert await inner.count_attempts() == 317 * 2
        remaining = await inner.list_feedback()
        assert 0 < len(remaining) < fb_before
        assert all(f.call_id.startswith("new-") for f in remaining)  # feedback went with its calls
        assert await svc.sweep() == 0  # idempotent
        assert svc.deleted == 1203 and svc.last_sweep == NOW
    finally:
        await inner.close()


async def test_zero_days_keeps_everything(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/r.db")
    await store.migrate()
    try:
        await store.insert_calls([make_call(i, created_at=1.0 + i) for i in range(10)])
        svc = RetentionService(lambda: store, lambda: PrivacySettings(retention_days=0))
        assert await svc.sweep() == 0
        assert await store.count_calls() == 10
    finally:
        await store.close()


def test_the_gateway_runs_retention_in_the_background(make_gateway: Any, fake_upstream: str,
                                                      tmp_path: Path) -> None:
    cfg = base_config(fake_upstream, tmp_path,
                      privacy={"retention_days": 30, "retention_interval_s": 0.2, "retention_batch": 50})
    gw = make_gateway(cfg)
    url = gw.gateway.settings.store.url
    now = time.time()
    with_store(url, lambda s: _fill(s, old=420, new=80, now=now))  # type: ignore[arg-type]
    assert poll_store(url, lambda s: s.count_calls(), lambda n: n == 80, timeout=20) == 80
    assert with_store(url, lambda s: s.count_attempts()) == 160
    deadline = time.monotonic() + 5  # the counter moves once the sweep's last batch returns
    while gw.gateway.retention.deleted < 420 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.gateway.retention.deleted == 420
