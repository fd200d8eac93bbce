"""`[privacy] retention_days`: a background service that deletes calls older than the window.

Every `retention_interval_s` it deletes calls created before now - retention_days (with their
attempts, feedback and orphaned blobs) through `Store.delete_older_than`, `retention_batch`
calls per transaction, so the batched writer's inserts interleave with a large purge; feedback that
old whose call never arrived goes too (else it stayed, waited for in `rollup_waiting`, forever). Settings
are read through a getter at each sweep: a config reload that changes the window takes effect
at the next sweep. `retention_days = 0` keeps everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.background import cancel_and_wait
from gateway.config.settings import PrivacySettings
from gateway.store.base import Store

log = logging.getLogger(__name__)

DAY_S = 86_400.0


class RetentionService:
    """Deletes calls past the retention window, on a timer, for the gateway's lifetime."""

    def __init__(self, store: Callable[[], Store | None], privacy: Callable[[], PrivacySettings],
                 *, clock: Callable[[], float] = time.time) -> None:
        """`store` and `privacy` are getters: the store opens in the gateway's start(), and a
        config reload replaces the settings. `clock` is for tests."""
        self._store = store
        self._privacy = privacy
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0  # calls deleted since start
        self.last_sweep: float | None = None

    async def start(self) -> None:
        """Start the timer; the first sweep runs one interval after start (not during start-up)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flywheel-retention")

    async def stop(self) -> None:
        """Cancel the timer; a sweep in progress stops between two batch transactions at the latest."""
        task, self._task = self._task, None
        await cancel_and_wait([task])

    async def sweep(self) -> int:
        """Delete every call older than the window now; returns the number of calls deleted."""
        privacy = self._privacy()
        store = self._store()
        if privacy.retention_days <= 0 or store is None:
            return 0
        cutoff = self._clock() - privacy.retention_days * DAY_S
        deleted = await store.delete_older_than(cutoff, batch=privacy.retention_batch)
        self.deleted += deleted
        self.last_sweep = self._clock()
        if deleted:
            log.info("retention: deleted %d calls older than %g days", deleted, privacy.retention_days)
        return deleted

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._privacy().retention_interval_s)
            try:
                await self.sweep()
            except Exception:  # a database outage must not end the timer: try again next interval
                log.exception("retention sweep failed; retrying in %gs", self._privacy().retention_interval_s)
