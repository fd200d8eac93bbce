"""The batched writer between the request path and the store.

`submit_call` / `submit_feedback` never block and never raise: they put the record on a
bounded queue, encoded as its spill line (bytes, which the garbage collector does not track:
live records kept thousands of dicts and lists alive for up to `flush_ms`, the collector
promoted them through every generation, and its full passes over them stalled the event loop
for 5-25 ms several times a second under load). A background task drains the queue in batches
(`batch_size` rows, or whatever arrived within `flush_ms`), decodes them, runs the `prepare`
hook (the privacy scrubber) on each call and turns it into table rows at once, then inserts.
A batch in flight so holds rows (tuples of strings and numbers, which the collector stops
tracking), not records: ~10 containers per call, alive until the insert, had made logging
trigger 20 times as many collections as serving. Nothing is dropped silently: when the
queue is full, or an insert fails, rows go to the spill file (spill.py),
already prepared; on `start()` and every `retry_s` while running the writer re-ingests spilled
rows. After a failed insert, batches go straight to the spill file for `retry_s` (no waiting on
a dead database per batch) until a re-ingest or a later batch succeeds. `stop()` drains the
queue: rows are written, or spilled if the database is down.

A batch the reachable database refuses is retried row by row (isolate.py): one bad row (a NUL
character, an unencodable string) is repaired or quarantined, never blocking the rows around it,
in the queue or in the spill file. A call whose queued line is over `offload_bytes` is decoded,
scrubbed and encoded on a worker thread (one 60,000-message request had stalled every other
request for seconds), and with `max_messages` a request keeps only its newest messages before it is
even queued (a slice: decoding 60,000 messages again held the interpreter lock for ~160 ms, even
on a thread). When neither the database nor the spill file takes rows (disk full), up to
`memory_rows` are held in memory and retried; rows beyond that are lost, counted and logged.
With `migrate=True` the writer also applies the store's migrations, at start or, when the
database is down then, once it is back: the gateway serves and spills meanwhile.

With a `journal` (journal.py) every queued line also reaches local disk within `journal_ms`, one
write per window, so a SIGKILL loses at most that window whatever the database lag; segments go
once their rows are handled, and a dead writer's are replayed by whichever writer finds them.

This module is the queue and its background loops (drain, overflow spill, journal, retry); a batch
is prepared and written in writer_batch.py, inserted, spilled or held in writer_store.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from gateway.store.base import Store
from gateway.store.journal import Journal
from gateway.store.records import CallRecord, FeedbackRecord, evolve
from gateway.store.spill import encode
from gateway.store.writer_batch import BatchSide, Prepare, Preparer
from gateway.store.writer_store import WriterStats

__all__ = ["CallWriter", "Prepare", "Preparer", "WriterStats"]

log = logging.getLogger(__name__)
# A journal window larger than this is sealed and written on a thread (see _journal_loop).
_JOURNAL_INLINE_BYTES = 256 * 1024


class CallWriter(BatchSide):
    """Batches calls and feedback into the store without ever blocking the request path."""

    def __init__(
        self,
        store: Store,
        spill_path: str | Path,
        *,
        batch_size: int = 256,
        flush_ms: float = 50.0,
        max_queue: int = 10_000,
        retry_s: float = 5.0,
        prepare: Preparer | Prepare | None = None,
        offload_bytes: int = 64_000,
        memory_rows: int = 100_000,
        migrate: bool = False,
        max_messages: int | None = None,
        journal: Journal | None = None,
        journal_ms: float = 100.0,
    ) -> None:
        """Nothing runs until `await start()`; records submitted before then wait in the queue."""
        super().__init__(store, spill_path, batch_size=batch_size, retry_s=retry_s, memory_rows=memory_rows,
                         migrate=migrate, journal=journal, prepare=prepare, offload_bytes=offload_bytes)
        self._journal_s = journal_ms / 1000
        self._journal_stop = False
        self._max_messages = max_messages
        self._flush_s = flush_ms / 1000
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_queue)  # encoded records
        self._overflow: list[bytes] = []  # queue full: waiting for the spill task
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()  # a whole batch is waiting (or flush/stop asked)
        self._flushes = 0  # flush() calls waiting: write what is queued without the flush_ms wait
        self._overflow_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._stopped = False
        self._spilling = False

    # -- request path ------------------------------------------------------------------------

    def submit_call(self, rec: CallRecord) -> None:
        """Enqueue a call; never blocks, never raises."""
        try:
            if not isinstance(rec, CallRecord):
                raise TypeError(f"expected a CallRecord, got {type(rec).__name__}")
            line = encode(self._fewer_messages(rec) if self._max_messages else rec)
            self._pending.add(rec.id)
            self._submit(line)
        except Exception:  # the request path must not fail because of logging
            log.exception("call writer: could not accept call %s", getattr(rec, "id", "?"))

    def _fewer_messages(self, rec: CallRecord) -> CallRecord:
        """`rec` with at most `max_messages` of its newest request messages: a list slice, cheap on
        the request path, where encoding 60,000 messages (and decoding them again in the writer,
        holding the interpreter lock even on a thread) would stall every other request."""
        messages = rec.request.get("messages") if isinstance(rec.request, dict) else None
        keep = self._max_messages
        if not isinstance(messages, list) or keep is None or len(messages) <= keep:
            return rec
        note = f"request truncated: {len(messages) - keep} of {len(messages)} messages left out"
        return evolve(rec, request={**rec.request, "messages": messages[-keep:]},
                      notes=note if not rec.notes else f"{rec.notes}; {note}")

    def submit_feedback(self, fb: FeedbackRecord) -> None:
        """Enqueue a feedback row; never blocks, never raises."""
        try:
            if not isinstance(fb, FeedbackRecord):
                raise TypeError(f"expected a FeedbackRecord, got {type(fb).__name__}")
            self._submit(encode(fb))
        except Exception:
            log.exception("call writer: could not accept feedback %s", getattr(fb, "id", "?"))

    def _submit(self, line: bytes) -> None:
        if self._journal is not None and not self._stopped:
            self._unjournaled.append(line)  # on disk within journal_ms (_journal_loop)
        if not self._closing:
            try:
                self._queue.put_nowait(line)
            except asyncio.QueueFull:
                pass
            else:
                self._queue_in += 1
                self._stats.queued += 1
                self._nonempty.set()
                if self._queue.qsize() >= self._batch_size:
                    self._full.set()
                return
        if self._stopped:  # no task left to hand it to: spill here (shutdown only)
            self._spill_now([line])
            return
        self._overflow.append(line)
        self._overflow_ready.set()

    def pending(self, call_id: str) -> bool:
        """True while a submitted call is not yet stored (queued, in flight or spilled)."""
        return call_id in self._pending

    @property
    def depth(self) -> int:
        """Rows accepted but not yet written or spilled (queue plus overflow)."""
        return self._queue.qsize() + len(self._overflow)

    @property
    def stats(self) -> WriterStats:
        """A snapshot of the counters."""
        return replace(self._stats, held=len(self._held))

    async def start(self) -> None:
        """Re-ingest rows spilled by a previous run (if the store takes them), then start draining."""
        if self._tasks or self._stopped:
            raise RuntimeError("CallWriter.start() called twice")
        self._spill_dirty = await asyncio.to_thread(self._spill.has_data)
        if self._journal is not None:
            await asyncio.to_thread(self._journal.open)
        if await self._ensure_migrated():
            await self._reingest()
        await self._replay_journals()  # a previous run's (or a dead sibling's) journal: before new rows
        for coro in (self._drain_loop(), self._spill_loop(), self._retry_loop(), self._journal_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Write (or spill) everything still queued, then stop the background tasks.

        After `timeout_s` the in-flight insert is abandoned and the remaining rows are spilled.
        """
        if self._closing:
            return
        self._closing = True
        self._nonempty.set()
        self._full.set()
        self._overflow_ready.set()
        if self._tasks:
            drain, spill, retry, journal = self._tasks
            retry.cancel()
            _, late = await asyncio.wait([drain, spill], timeout=timeout_s)
            for task in late:  # an insert hangs: its rows are spilled on cancellation
                task.cancel()
            self._journal_stop = True  # not cancelled: a write on a worker thread would outlive it
            await asyncio.wait([drain, spill, retry, journal])
        self._stopped = True
        rest = self._overflow + list(self._drain_queue(self._queue.qsize()))
        self._overflow = []
        if rest:
            self._spill_now(rest)
        if self._journal is not None:  # every line is stored or spilled now (unless held in memory)
            self._journal.close(clean=not self._held)

    async def flush(self) -> None:
        """Wait until everything submitted so far is written (or spilled). For tests and tools."""
        if not self._tasks or self._closing:
            raise RuntimeError("CallWriter.flush() needs a running writer")
        self._flushes += 1
        self._full.set()
        try:
            await self._queue.join()
        finally:
            self._flushes -= 1
        while self._overflow or self._spilling:
            await asyncio.sleep(0.005)

    # -- background tasks --------------------------------------------------------------------

    def _drain_queue(self, n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield self._queue.get_nowait()
            self._queue.task_done()

    async def _drain_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._queue.empty():
                if self._closing:
                    return
                self._nonempty.clear()
                await self._nonempty.wait()
                continue
            if self._queue.qsize() < self._batch_size and not self._closing and not self._flushes:
                self._full.clear()  # give more rows flush_ms to arrive, unless a batch fills first
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_s)
            # Far behind (8 batches queued): 4 batches per insert, so the per-transaction cost (a
            # commit, the forgotten-users check, three COPYs) is paid a quarter as often
            size = self._batch_size * (4 if self._queue.qsize() > 8 * self._batch_size else 1)
            batch = [self._queue.get_nowait() for _ in range(min(self._queue.qsize(), size))]
            try:
                await self._write_batch(batch, skip_db=loop.time() < self._down_until)
            except Exception:
                log.exception("call writer: unexpected error writing a batch")
            finally:
                self._queue_done += len(batch)
                for _ in batch:
                    self._queue.task_done()

    async def _spill_loop(self) -> None:
        """Spill rows that found the queue full (prepared first: spill files hold scrubbed rows)."""
        while True:
            if not self._overflow:
                if self._closing:
                    return
                self._overflow_ready.clear()
                await self._overflow_ready.wait()
                continue
            self._spilling = True
            try:
                lines, self._overflow = self._overflow, []
                calls, feedback = self._decoded(lines)
                await self._spill_async([*calls, *feedback])
            finally:
                self._spilling = False

    async def _journal_loop(self) -> None:
        """Every journal_ms: the lines queued since, as one journal record; then the segments whose
        rows are all handled go (never while rows wait outside the queue's order: overflow, memory)."""
        journal = self._journal
        if journal is None:
            return
        while not self._journal_stop:
            await asyncio.sleep(self._journal_s)  # a timer: cheaper than wait_for on an event, 10 times a second
            lines, self._unjournaled = self._unjournaled, []
            end = self._queue_in
            try:
                # on a thread with fsync (a disk flush must not stall the loop) or when the window holds a
                # big call (sealing and copying megabytes stalled other requests ~30 ms); else a
                # page-cache copy, cheaper than a thread hand-off
                offload = journal.fsync or sum(map(len, lines)) > _JOURNAL_INLINE_BYTES
                ok = await asyncio.to_thread(journal.write, lines, end) if offload else journal.write(lines, end)
                self._stats.journaled += len(lines) if ok else 0
                if not (self._overflow or self._spilling or self._held):
                    journal.release(self._queue_done)
            except Exception:
                log.exception("call writer: journal round failed")

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s)
            try:
                await self._retry_round()
            except Exception:  # never let the retry loop die: it is what brings rows back
                log.exception("call writer: retry round failed")
