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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from gateway.store import codec
from gateway.store.base import Store
from gateway.store.nul import NUL_JSON
from gateway.store.records import CallRecord, FeedbackRecord, evolve
from gateway.store.spill import Spillable, decode, encode
from gateway.store.writer_store import StoreSide, WriterStats

__all__ = ["CallWriter", "Prepare", "Preparer", "WriterStats"]

log = logging.getLogger(__name__)


class Preparer(Protocol):
    """What the writer does to rows before storing them (gateway/capture/prepare.py)."""

    def observe(self, rec: CallRecord) -> CallRecord:
        """On the event loop, in submission order: state that follows the calls (signals, prices)."""
        ...

    def sanitize_call(self, rec: CallRecord, *, nul: bool = True, size: int | None = None) -> CallRecord:
        """Thread-safe: the call as it may be stored (`nul`: it may hold NUL characters; `size`:
        its encoded bytes when known)."""
        ...

    def sanitize_feedback(self, fb: FeedbackRecord, *, nul: bool = True) -> FeedbackRecord:
        """Thread-safe: the feedback row as it may be stored."""
        ...


Prepare = Callable[[CallRecord], CallRecord]


class _FunctionPreparer:
    """A bare call hook (tests, benchmarks) as a Preparer."""

    def __init__(self, fn: Prepare) -> None:
        self._fn = fn

    def observe(self, rec: CallRecord) -> CallRecord:
        return rec

    def sanitize_call(self, rec: CallRecord, *, nul: bool = True, size: int | None = None) -> CallRecord:
        return self._fn(rec)

    def sanitize_feedback(self, fb: FeedbackRecord, *, nul: bool = True) -> FeedbackRecord:
        return fb


class CallWriter(StoreSide):
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
    ) -> None:
        """Nothing runs until `await start()`; records submitted before then wait in the queue."""
        super().__init__(store, spill_path, batch_size=batch_size, retry_s=retry_s, memory_rows=memory_rows,
                         migrate=migrate)
        self._offload_bytes = offload_bytes
        self._max_messages = max_messages
        self._flush_s = flush_ms / 1000
        self._prepare: Preparer | None = (
            _FunctionPreparer(prepare) if prepare is not None and not hasattr(prepare, "sanitize_call")
            else prepare  # type: ignore[assignment]
        )
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
        return replace(self._stats, held=len(self._held))

    async def start(self) -> None:
        """Re-ingest rows spilled by a previous run (if the store takes them), then start draining."""
        if self._tasks or self._stopped:
            raise RuntimeError("CallWriter.start() called twice")
        self._spill_dirty = await asyncio.to_thread(self._spill.has_data)
        if await self._ensure_migrated():
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
            skip_db = skip_db or not await self._ensure_migrated()
            if rows.calls and not skip_db:
                unsaved.extend(await self._insert_rows(rows))
            elif rows.calls:
                unsaved.extend(codec.calls_from_rows(rows))
            for i, fb in enumerate(feedback):
                if skip_db or unsaved:
                    unsaved.extend(feedback[i:])
                    break
                unsaved.extend(await self._insert_feedback(fb))
            self._stats.written += len(rows.calls) + len(feedback) - len(unsaved)
        except asyncio.CancelledError:
            await self._spill_async([*codec.calls_from_rows(rows), *feedback])
            raise
        if unsaved:
            await self._spill_async(unsaved)

    async def _rows_yielding(self, lines: list[bytes]) -> tuple[codec.CallRows, list[FeedbackRecord]]:
        """Queued lines as call rows (decoded, prepared, encoded) and feedback records, in slices:
        scrubbing costs up to ~1 ms a call, and a batch of hundreds must not stall the live
        requests that share this event loop. A line over `offload_bytes` is prepared on a worker
        thread instead."""
        rows = codec.CallRows([], [], {}, [])
        feedback: list[FeedbackRecord] = []
        done = 0  # lines[:done] are in rows/feedback (or rejected)
        try:
            while done < len(lines):
                if done:
                    await asyncio.sleep(0)
                line = lines[done]
                if len(line) > self._offload_bytes:
                    await self._offloaded(line, rows, feedback)
                    done += 1
                    continue
                end = done
                while end < len(lines) and end - done < 8 and len(lines[end]) <= self._offload_bytes:
                    end += 1
                calls, fb = self._decoded(lines[done:end])
                codec.call_rows(calls, rows)
                feedback += fb
                done = end
        except asyncio.CancelledError:  # stop() timed out on this batch: keep all of it
            self._spill_records_now([*codec.calls_from_rows(rows), *feedback])
            self._spill_now(lines[done:])  # prepared once: a second pass would re-infer signals
            raise
        return rows, feedback

    async def _offloaded(self, line: bytes, rows: codec.CallRows, feedback: list[FeedbackRecord]) -> None:
        """Decode, sanitise and encode one large line on a worker thread (its signals are observed
        here, on the loop, in order with the others)."""
        self._stats.offloaded += 1
        try:
            rec = await asyncio.to_thread(decode, line)
        except ValueError:
            log.exception("call writer: an encoded record did not decode; kept in %s", self._spill.rejected)
            self._reject(line)
            return
        prep = self._prepare
        nul = NUL_JSON in line
        try:
            if isinstance(rec, FeedbackRecord):
                feedback.append(rec if prep is None else await asyncio.to_thread(
                    lambda: prep.sanitize_feedback(rec, nul=nul)))
                return
            call = rec if prep is None else prep.observe(rec)
            part = await asyncio.to_thread(
                lambda: codec.call_rows([call if prep is None else prep.sanitize_call(call, nul=nul, size=len(line))]))
        except Exception:
            log.exception("call writer: prepare failed on %s; kept in %s", rec.id, self._spill.rejected)
            self._pending.discard(rec.id)
            self._reject(line)
            return
        rows.calls.extend(part.calls)
        rows.attempts.extend(part.attempts)
        rows.blobs.update(part.blobs)
        rows.refs.extend(part.refs)

    def _decoded(self, lines: Sequence[bytes]) -> tuple[list[CallRecord], list[FeedbackRecord]]:
        """Queued lines as records through the prepare hook; a line that does not decode, or that
        the hook fails on, goes to the rejected file."""
        calls: list[CallRecord] = []
        feedback: list[FeedbackRecord] = []
        for line in lines:
            try:
                rec = decode(line)
            except ValueError:
                log.exception("call writer: an encoded record did not decode; kept in %s", self._spill.rejected)
                self._reject(line)
                continue
            prep = self._prepare
            try:
                if isinstance(rec, CallRecord):
                    calls.append(rec if prep is None else prep.sanitize_call(
                        prep.observe(rec), nul=NUL_JSON in line, size=len(line)))
                else:
                    feedback.append(rec if prep is None else prep.sanitize_feedback(rec, nul=NUL_JSON in line))
            except Exception:
                log.exception("call writer: prepare failed on %s; kept in %s", rec.id, self._spill.rejected)
                self._pending.discard(rec.id)
                self._reject(line)
        return calls, feedback

    def _reject(self, line: bytes) -> None:
        self._stats.rejected += 1
        try:
            self._spill.reject([line])
        except Exception:
            # the line is unscrubbed: its size, never its text, goes to the log
            log.critical("call writer: LOST a row of %d bytes (could not write the rejected file)", len(line))

    def _spill_now(self, lines: list[bytes]) -> None:
        """Spill from synchronous code (after stop): decode and prepare, then append."""
        calls, feedback = self._decoded(lines)
        self._spill_records_now([*calls, *feedback])

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
            try:
                await self._retry_round()
            except Exception:  # never let the retry loop die: it is what brings rows back
                log.exception("call writer: retry round failed")
