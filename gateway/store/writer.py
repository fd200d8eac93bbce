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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.store import codec
from gateway.store.base import Store
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.spill import Spillable, SpillBatch, SpillFile, decode, encode

log = logging.getLogger(__name__)

Prepare = Callable[[CallRecord], CallRecord]


@dataclass(slots=True)
class WriterStats:
    """Cumulative row counters (calls and feedback together)."""

    queued: int = 0  # rows accepted into the queue
    written: int = 0  # rows inserted from the queue
    spilled: int = 0  # rows appended to the spill file
    reingested: int = 0  # rows inserted from a spill file
    failed_batches: int = 0  # inserts that raised (their rows were spilled)
    rejected: int = 0  # calls whose prepare hook raised: kept in the .rejected file, never stored


class CallWriter:
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
        prepare: Prepare | None = None,
    ) -> None:
        """Nothing runs until `await start()`; records submitted before then wait in the queue."""
        self._store = store
        self._spill = SpillFile(spill_path)
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000
        self._retry_s = retry_s
        self._prepare = prepare
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_queue)  # encoded records
        self._overflow: list[bytes] = []  # queue full: waiting for the spill task
        self._pending: set[str] = set()  # call ids submitted and not yet stored
        self._stats = WriterStats()
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()  # a whole batch is waiting (or flush/stop asked)
        self._flushes = 0  # flush() calls waiting: write what is queued without the flush_ms wait
        self._overflow_ready = asyncio.Event()
        self._file_lock = asyncio.Lock()  # appends vs. claiming the spill file
        self._reingest_lock = asyncio.Lock()
        self._claim_batches_done = 0  # batches of the claimed file this process re-ingested
        self._down_until = 0.0  # loop time before which batches skip the database
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
            line = encode(rec)
            self._pending.add(rec.id)
            self._submit(line)
        except Exception:  # the request path must not fail because of logging
            log.exception("call writer: could not accept call %s", getattr(rec, "id", "?"))

    def submit_feedback(self, fb: FeedbackRecord) -> None:
        """Enqueue a feedback row; never blocks, never raises."""
        try:
            if not isinstance(fb, FeedbackRecord):
                raise TypeError(f"expected a FeedbackRecord, got {type(fb).__name__}")
            self._submit(encode(fb))
        except Exception:
            log.exception("call writer: could not accept feedback %s", getattr(fb, "id", "?"))

    def _submit(self, line: bytes) -> None:
        if not self._closing:
            try:
                self._queue.put_nowait(line)
            except asyncio.QueueFull:
                pass
            else:
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
        return replace(self._stats)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-ingest rows spilled by a previous run (if the store takes them), then start draining."""
        if self._tasks or self._stopped:
            raise RuntimeError("CallWriter.start() called twice")
        await self._reingest()
        for coro in (self._drain_loop(), self._spill_loop(), self._retry_loop()):
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
            drain, spill, retry = self._tasks
            retry.cancel()
            _, late = await asyncio.wait([drain, spill], timeout=timeout_s)
            for task in late:  # an insert hangs: its rows are spilled on cancellation
                task.cancel()
            await asyncio.wait([drain, spill, retry])
        self._stopped = True
        rest = self._overflow + list(self._drain_queue(self._queue.qsize()))
        self._overflow = []
        if rest:
            self._spill_now(rest)

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
            batch = [self._queue.get_nowait() for _ in range(min(self._queue.qsize(), self._batch_size))]
            try:
                await self._write_batch(batch, skip_db=loop.time() < self._down_until)
            except Exception:
                log.exception("call writer: unexpected error writing a batch")
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, batch: list[bytes], *, skip_db: bool) -> None:
        """Insert one batch; whatever cannot be inserted is spilled."""
        rows, feedback = await self._rows_yielding(batch)
        unsaved: list[Spillable] = []
        try:
            if rows.calls and (skip_db or not await self._insert_rows(rows)):
                unsaved.extend(codec.calls_from_rows(rows))
            for i, fb in enumerate(feedback):
                if skip_db or unsaved or not await self._insert_feedback(fb):
                    unsaved.extend(feedback[i:])
                    break
            self._stats.written += len(rows.calls) + len(feedback) - len(unsaved)
        except asyncio.CancelledError:
            await self._spill_async([*codec.calls_from_rows(rows), *feedback])
            raise
        if unsaved:
            await self._spill_async(unsaved)

    async def _insert_rows(self, rows: codec.CallRows) -> bool:
        try:
            await self._store.insert_call_rows(rows)
        except Exception as e:
            self._db_failed(e)
            return False
        self._written(row[0] for row in rows.calls)
        return True

    async def _insert_feedback(self, fb: FeedbackRecord) -> bool:
        try:
            await self._store.insert_feedback(fb)
        except Exception as e:
            self._db_failed(e)
            return False
        return True

    def _db_failed(self, e: Exception) -> None:
        self._stats.failed_batches += 1
        self._down_until = asyncio.get_running_loop().time() + self._retry_s
        log.warning("call writer: store insert failed (%s: %s); spilling", type(e).__name__, e)

    def _written(self, call_ids: Iterable[str]) -> None:
        self._pending.difference_update(call_ids)

    async def _rows_yielding(self, lines: list[bytes]) -> tuple[codec.CallRows, list[FeedbackRecord]]:
        """Queued lines as call rows (decoded, prepared, encoded) and feedback records, in slices:
        scrubbing costs up to ~1 ms a call, and a batch of hundreds must not stall the live
        requests that share this event loop."""
        rows = codec.CallRows([], [], {}, [])
        feedback: list[FeedbackRecord] = []
        for start in range(0, len(lines), 8):
            if start:
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:  # stop() timed out on this batch: keep all of it
                    self._spill_records_now([*codec.calls_from_rows(rows), *feedback])
                    self._spill_now(lines[start:])  # prepared once: a second pass would re-infer signals
                    raise
            calls, fb = self._decoded(lines[start:start + 8])
            codec.call_rows(calls, rows)
            feedback += fb
        return rows, feedback

    def _decoded(self, lines: Sequence[bytes]) -> tuple[list[CallRecord], list[FeedbackRecord]]:
        """Queued lines as records, calls through the prepare hook; a line that does not decode goes
        to the rejected file."""
        records: list[Spillable] = []
        for line in lines:
            try:
                records.append(decode(line))
            except ValueError:
                log.exception("call writer: an encoded record did not decode; kept in %s", self._spill.rejected)
                self._reject(line)
        calls = self._prepared([r for r in records if isinstance(r, CallRecord)])
        return calls, [r for r in records if isinstance(r, FeedbackRecord)]

    def _reject(self, line: bytes) -> None:
        self._stats.rejected += 1
        try:
            self._spill.reject([line])
        except Exception:
            # the line is unscrubbed: its size, never its text, goes to the log
            log.critical("call writer: LOST a row of %d bytes (could not write the rejected file)", len(line))

    def _prepared(self, calls: list[CallRecord]) -> list[CallRecord]:
        """Calls through the prepare hook; a call it fails on goes to the rejected file."""
        if self._prepare is None:
            return calls
        out: list[CallRecord] = []
        for c in calls:
            try:
                out.append(self._prepare(c))
            except Exception:
                log.exception(
                    "call writer: prepare failed on call %s; kept in %s", c.id, self._spill.rejected
                )
                self._pending.discard(c.id)
                self._reject(encode(c))
        return out

    async def _spill_async(self, records: Sequence[Spillable]) -> None:
        async with self._file_lock:
            try:
                await asyncio.to_thread(self._spill.append, records)
            except Exception:
                self._lost(records)
                return
        self._stats.spilled += len(records)

    def _spill_now(self, lines: list[bytes]) -> None:
        """Spill from synchronous code (after stop): decode and prepare, then append."""
        calls, feedback = self._decoded(lines)
        self._spill_records_now([*calls, *feedback])

    def _spill_records_now(self, records: list[Spillable]) -> None:
        try:
            self._spill.append(records)
        except Exception:
            self._lost(records)
            return
        self._stats.spilled += len(records)

    def _lost(self, records: Sequence[Spillable]) -> None:
        ids = [r.id for r in records]
        log.critical(
            "call writer: LOST %d rows, spill file %s not writable: %s", len(ids), self._spill.path, ids
        )
        self._pending.difference_update(ids)

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

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s)
            if self._spill.has_data():
                await self._reingest()

    async def _reingest(self) -> bool:
        """Insert spilled rows; True when no spilled rows remain. Failures leave the file in place."""
        try:
            async with self._reingest_lock:
                while True:
                    async with self._file_lock:
                        path = await asyncio.to_thread(self._spill.claim)
                    if path is None:
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
            for r in batch.records:
                if isinstance(r, FeedbackRecord):
                    await self._store.insert_feedback(r)
        except Exception as e:
            self._down_until = asyncio.get_running_loop().time() + self._retry_s
            log.warning("call writer: re-ingest failed (%s: %s); will retry", type(e).__name__, e)
            return False
        self._down_until = 0.0
        if batch.bad_lines:
            async with self._file_lock:
                await asyncio.to_thread(self._spill.reject, batch.bad_lines)
        self._stats.reingested += len(batch.records)
        self._written(c.id for c in calls)
        return True
