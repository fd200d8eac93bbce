"""The writer's store side: inserting batches, isolating bad rows, spilling, holding rows in memory
when the spill file is not writable, re-ingesting the spill file and replaying dead writers'
journals (see writer.py for the whole).

`CallWriter` (writer.py) derives from `BatchSide` (writer_batch.py), which derives from `StoreSide`:
the queue and batching are in writer.py, preparing a batch in writer_batch.py, everything after a
batch is built is here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.store import codec
from gateway.store.base import Store
from gateway.store.health import StoreHealth, unavailable
from gateway.store.isolate import insert_one_by_one
from gateway.store.journal import Journal
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.spill import Spillable, SpillBatch, SpillFile, encode

log = logging.getLogger("gateway.store.writer")


@dataclass(slots=True)
class WriterStats:
    """Cumulative row counters (calls and feedback together)."""

    queued: int = 0  # rows accepted into the queue
    written: int = 0  # rows inserted from the queue
    spilled: int = 0  # rows appended to the spill file
    reingested: int = 0  # rows inserted from a spill file
    failed_batches: int = 0  # inserts that raised (their rows were spilled)
    rejected: int = 0  # calls whose prepare hook raised: kept in the .rejected file, never stored
    isolated_batches: int = 0  # batches the database refused, retried row by row
    repaired: int = 0  # rows stored after NUL characters were replaced
    quarantined: int = 0  # rows the database refused even so: kept in the .rejected file
    offloaded: int = 0  # calls prepared on a worker thread (over offload_bytes)
    held: int = 0  # rows in memory now: neither the database nor the spill file took them
    lost: int = 0  # rows lost: memory_rows was full too
    journaled: int = 0  # rows written to the journal (journal.py)
    replayed: int = 0  # rows replayed from a dead writer's journal (stored, or spilled)


class StoreSide:
    """Everything the writer does once a batch is built (see the module docstring)."""

    def __init__(self, store: Store, spill_path: str | Path, *, batch_size: int, retry_s: float,
                 memory_rows: int, migrate: bool, journal: Journal | None = None) -> None:
        self._store = store
        self._spill = SpillFile(spill_path)
        self._batch_size = batch_size
        self._retry_s = retry_s
        self.health = StoreHealth()
        self._memory_rows = memory_rows
        self._held: list[Spillable] = []  # neither the database nor the spill file took these
        self._migrated = not migrate
        self._spill_dirty = False  # the spill file may hold rows (set on spill, cleared once re-ingested)
        self._pending: set[str] = set()  # call ids submitted and not yet stored
        self._stats = WriterStats()
        self._file_lock = asyncio.Lock()  # appends vs. claiming the spill file
        self._reingest_lock = asyncio.Lock()
        self._claim_batches_done = 0  # batches of the claimed file this process re-ingested
        self._down_until = 0.0  # loop time before which batches skip the database
        self._journal = journal
        self._unjournaled: list[bytes] = []  # queued lines not yet in the journal
        self._queue_in = 0  # lines put on the queue, ever
        self._queue_done = 0  # of those, handled (stored, spilled or quarantined), in queue order
        # (table, seconds) of every successful database write: the gateway feeds its metrics with it
        self.observe_write: Callable[[str, float], None] | None = None

    def holds_unwritten(self) -> bool:
        """True when rows are waiting outside the queue (spilled, or held in memory), including
        those a previous run spilled: a call id not in the store may yet arrive."""
        return bool(self._held or self._spill_dirty)

    # -- lifecycle ---------------------------------------------------------------------------

    async def _ensure_migrated(self) -> bool:
        """Apply the store's migrations once (with `migrate=True`); False while the store is down."""
        if self._migrated:
            return True
        try:
            await self._store.migrate()
        except Exception as e:
            self._db_failed(e, "migrations")
            return False
        self._migrated = True
        self.health.ok()
        return True

    async def _insert_rows(self, rows: codec.CallRows) -> list[Spillable]:
        """Insert a batch of call rows; returns what must be spilled (the store is down)."""
        started = time.perf_counter()
        try:
            await self._store.insert_call_rows(rows)
        except Exception as e:
            if unavailable(e):
                self._db_failed(e, "a batch insert")
                return list(codec.calls_from_rows(rows))
            return await self._isolate(list(codec.calls_from_rows(rows)), e)
        if self.observe_write is not None:
            self.observe_write("calls", time.perf_counter() - started)
        self.health.ok()
        self._written(row[0] for row in rows.calls)
        return []

    async def _insert_feedback(self, feedback: list[FeedbackRecord]) -> list[Spillable]:
        """Insert a batch's feedback rows in one transaction; returns what must be spilled."""
        started = time.perf_counter()
        try:
            await self._store.insert_feedback_many(feedback)
        except Exception as e:
            if unavailable(e):
                self._db_failed(e, "a feedback insert")
                return list(feedback)
            return await self._isolate(list(feedback), e)
        if self.observe_write is not None:
            self.observe_write("feedback", time.perf_counter() - started)
        self.health.ok()
        return []

    async def _isolate(self, records: list[Spillable], e: Exception) -> list[Spillable]:
        """The reachable store refused a batch: retry it row by row (isolate.py); returns what must
        be spilled. Quarantined rows count as handled (the written counter includes them)."""
        self._stats.isolated_batches += 1
        log.warning("call writer: the store refused a batch of %d rows (%s: %s); retrying row by row",
                    len(records), type(e).__name__, str(e)[:200])
        done = await insert_one_by_one(self._store, records, self.health)
        self._stats.repaired += done.repaired
        if done.quarantined:
            self._stats.quarantined += len(done.quarantined)
            try:
                await asyncio.to_thread(self._spill.reject, [encode(r) for r in done.quarantined])
            except Exception:
                log.critical("call writer: LOST %d quarantined rows (could not write %s)",
                             len(done.quarantined), self._spill.rejected)
        self._written(r.id for r in [*done.written, *done.quarantined] if isinstance(r, CallRecord))
        if done.unsaved:
            self._down_until = asyncio.get_running_loop().time() + self._retry_s
        return done.unsaved

    def _db_failed(self, e: Exception, where: str) -> None:
        self._stats.failed_batches += 1
        self._down_until = asyncio.get_running_loop().time() + self._retry_s
        self.health.failed(e, where)  # one log line per outage, not one per batch

    def _written(self, call_ids: Iterable[str]) -> None:
        self._pending.difference_update(call_ids)

    async def _spill_async(self, records: Sequence[Spillable]) -> None:
        async with self._file_lock:
            try:
                await asyncio.to_thread(self._spill.append, records)
            except Exception as e:
                self._hold(records, e)
                return
        self._spill_dirty = True
        self._stats.spilled += len(records)

    def _hold(self, records: Sequence[Spillable], e: Exception) -> None:
        """Neither the database nor the spill file takes `records` (disk full): keep them in memory
        up to `memory_rows` for the retry loop; the rest are lost."""
        room = max(0, self._memory_rows - len(self._held))
        if not self._held and room:
            log.error("call writer: spill file %s not writable (%s: %s); holding rows in memory (up to %d)",
                      self._spill.path, type(e).__name__, e, self._memory_rows)
        self._held.extend(records[:room])
        if len(records) > room:
            self._lost(records[room:])

    def _spill_records_now(self, records: list[Spillable]) -> None:
        try:
            self._spill.append(records)
        except Exception:
            self._lost(records)
            return
        self._stats.spilled += len(records)

    def _lost(self, records: Sequence[Spillable]) -> None:
        ids = [r.id for r in records]
        self._stats.lost += len(ids)
        log.critical(
            "call writer: LOST %d rows (database, spill file %s and memory_rows all full): %s",
            len(ids), self._spill.path, ids[:20],
        )
        self._pending.difference_update(ids)

    async def _release_held(self) -> None:
        """Rows held in memory go to the database, else to the spill file, else stay held. They
        stay in `_held` (and in the stats) until one of them took them."""
        held = list(self._held)
        unsaved: list[Spillable] = held
        if asyncio.get_running_loop().time() >= self._down_until and await self._ensure_migrated():
            unsaved = []
            calls = [r for r in held if isinstance(r, CallRecord)]
            if calls:
                unsaved += await self._insert_rows(codec.call_rows(calls))
            feedback = [r for r in held if isinstance(r, FeedbackRecord)]
            if feedback:
                unsaved += feedback if unsaved else await self._insert_feedback(feedback)
            self._stats.written += len(held) - len(unsaved)
        if unsaved:
            async with self._file_lock:
                try:
                    await asyncio.to_thread(self._spill.append, unsaved)
                except Exception:
                    # keep the unsaved ones and those held meanwhile (objects, not equality: cheap)
                    written = {id(r) for r in held} - {id(r) for r in unsaved}
                    self._held = [r for r in self._held if id(r) not in written]
                    return
            self._spill_dirty = True
            self._stats.spilled += len(unsaved)
        self._held = self._held[len(held):]  # rows held meanwhile came after these

    async def _reingest(self) -> bool:
        """Insert spilled rows; True when no spilled rows remain. Failures leave the file in place."""
        try:
            async with self._reingest_lock:
                while True:
                    async with self._file_lock:
                        path = await asyncio.to_thread(self._spill.claim)
                    if path is None:
                        self._spill_dirty = False
                        return True
                    if not await self._reingest_file(path):
                        return False
        except Exception:
            log.exception("call writer: re-ingesting %s failed", self._spill.path)
            return False

    async def _reingest_file(self, path: Path) -> bool:
        batches = SpillFile.read(path, self._batch_size)
        index = 0
        try:
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                # The claimed file never changes, so batch i is the same batch on every try.
                if index >= self._claim_batches_done:
                    if not await self._reingest_batch(batch):
                        return False
                    self._claim_batches_done = index + 1
                index += 1
        finally:
            batches.close()
        await asyncio.to_thread(self._spill.release, path)
        self._claim_batches_done = 0
        return True

    async def _reingest_batch(self, batch: SpillBatch) -> bool:
        calls = [r for r in batch.records if isinstance(r, CallRecord)]
        try:
            if calls:
                await self._store.insert_calls(calls)
            await self._store.insert_feedback_many([r for r in batch.records if isinstance(r, FeedbackRecord)])
        except Exception as e:
            if unavailable(e):
                self._db_failed(e, "re-ingesting the spill file")
                return False
            # A row the store refuses (a NUL from an older version's spill): isolate it, never
            # retry the whole batch forever.
            if await self._isolate(list(batch.records), e):
                return False  # the store went away midway: the batch is retried (known ids skipped)
        self._down_until = 0.0
        self.health.ok()
        if batch.bad_lines:
            async with self._file_lock:
                await asyncio.to_thread(self._spill.reject, batch.bad_lines)
        self._stats.reingested += len(batch.records)
        self._written(c.id for c in calls)
        return True

    async def _retry_round(self) -> None:
        """One round of the retry loop: rows held in memory, migrations, the spill file, dead
        writers' journals."""
        if self._held:
            await self._release_held()
        if await self._ensure_migrated() and await asyncio.to_thread(self._spill.has_data):
            await self._reingest()
        await self._replay_journals()

    async def _write_batch(self, batch: list[bytes], *, skip_db: bool, replay: bool = False) -> None:
        raise NotImplementedError  # writer_batch.py: queued lines prepared, then inserted or spilled

    async def _replay_journals(self) -> None:
        """Rows in the journal segments of writers that died (journal.py): prepared and inserted
        (or spilled) like queued rows, then the segments go. Known ids are skipped by the store."""
        journal = self._journal
        if journal is None:
            return
        loop = asyncio.get_running_loop()
        for owner in await asyncio.to_thread(journal.orphans):
            fd = await asyncio.to_thread(journal.claim, owner)
            if fd is None:
                continue  # alive, or another writer is replaying it
            done = True
            try:
                for path in await asyncio.to_thread(journal.segments, owner):
                    try:
                        lines = await asyncio.to_thread(journal.lines, path)
                    except ValueError as e:
                        log.error("call writer: %s; kept as %s.unreadable for an operator", e, path.name)
                        await asyncio.to_thread(path.rename, path.with_name(path.name + ".unreadable"))
                        continue
                    for i in range(0, len(lines), self._batch_size):
                        chunk = lines[i:i + self._batch_size]
                        await self._write_batch(chunk, skip_db=loop.time() < self._down_until, replay=True)
                        self._stats.replayed += len(chunk)
                    if self._held:  # neither the database nor the spill file took them: keep the segment
                        done = False
                        break
                    await asyncio.to_thread(path.unlink, True)
                    log.warning("call writer: replayed %d rows from %s (a writer that died)", len(lines), path.name)
            finally:
                if done:
                    await asyncio.to_thread(journal.finish, owner, fd)
                else:
                    os.close(fd)
