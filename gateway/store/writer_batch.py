"""The writer's batch step: queued lines decoded, run through the prepare hook (the privacy
scrubber, gateway/capture/prepare.py) and turned into table rows, then inserted, or spilled when
they cannot be (see writer.py for the whole).

A batch is prepared in slices, yielding to the event loop between them, and a line over
`offload_bytes` on a worker thread; a line that does not decode, or that the hook fails on, goes to
the rejected file. `CallWriter` (writer.py) derives from `BatchSide`: the queue and its loops are
there; inserting, spilling and re-ingesting are in writer_store.py (`StoreSide`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from gateway.store import codec
from gateway.store.base import Store
from gateway.store.journal import Journal
from gateway.store.nul import NUL_JSON
from gateway.store.records import CallRecord, FeedbackRecord
from gateway.store.spill import Spillable, decode
from gateway.store.writer_store import StoreSide

log = logging.getLogger("gateway.store.writer")


class Preparer(Protocol):
    """What the writer does to rows before storing them (gateway/capture/prepare.py)."""

    def observe(self, rec: CallRecord, *, signals: bool = True) -> CallRecord:
        """On the event loop, in submission order: state that follows the calls (signals, prices;
        `signals=False` for a replayed journal, whose inferred feedback may be stored already)."""
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

    def observe(self, rec: CallRecord, *, signals: bool = True) -> CallRecord:
        return rec

    def sanitize_call(self, rec: CallRecord, *, nul: bool = True, size: int | None = None) -> CallRecord:
        return self._fn(rec)

    def sanitize_feedback(self, fb: FeedbackRecord, *, nul: bool = True) -> FeedbackRecord:
        return fb


class BatchSide(StoreSide):
    """Turns a batch of queued lines into stored (or spilled) rows (see the module docstring)."""

    def __init__(self, store: Store, spill_path: str | Path, *, batch_size: int, retry_s: float,
                 memory_rows: int, migrate: bool, journal: Journal | None, prepare: Preparer | Prepare | None,
                 offload_bytes: int) -> None:
        super().__init__(store, spill_path, batch_size=batch_size, retry_s=retry_s, memory_rows=memory_rows,
                         migrate=migrate, journal=journal)
        self._offload_bytes = offload_bytes
        self._prepare: Preparer | None = (
            _FunctionPreparer(prepare) if prepare is not None and not hasattr(prepare, "sanitize_call")
            else prepare  # type: ignore[assignment]
        )

    async def _write_batch(self, batch: list[bytes], *, skip_db: bool, replay: bool = False) -> None:
        """Insert one batch; whatever cannot be inserted is spilled."""
        rows, feedback = await self._rows_yielding(batch, replay)
        unsaved: list[Spillable] = []
        try:
            skip_db = skip_db or not await self._ensure_migrated()
            if rows.calls and not skip_db:
                unsaved.extend(await self._insert_rows(rows))
            elif rows.calls:
                unsaved.extend(codec.calls_from_rows(rows))
            if feedback:
                unsaved.extend(feedback if skip_db or unsaved else await self._insert_feedback(feedback))
            self._stats.written += len(rows.calls) + len(feedback) - len(unsaved)
        except asyncio.CancelledError:
            await self._spill_async([*codec.calls_from_rows(rows), *feedback])
            raise
        if unsaved:
            await self._spill_async(unsaved)

    async def _rows_yielding(self, lines: list[bytes], replay: bool = False,
                             ) -> tuple[codec.CallRows, list[FeedbackRecord]]:
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
                    await self._offloaded(line, rows, feedback, replay)
                    done += 1
                    continue
                end = done
                while end < len(lines) and end - done < 8 and len(lines[end]) <= self._offload_bytes:
                    end += 1
                calls, fb = self._decoded(lines[done:end], replay)
                codec.call_rows(calls, rows)
                feedback += fb
                done = end
        except asyncio.CancelledError:  # stop() timed out on this batch: keep all of it
            self._spill_records_now([*codec.calls_from_rows(rows), *feedback])
            self._spill_now(lines[done:])  # prepared once: a second pass would re-infer signals
            raise
        return rows, feedback

    async def _offloaded(self, line: bytes, rows: codec.CallRows, feedback: list[FeedbackRecord],
                         replay: bool = False) -> None:
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
            call = rec if prep is None else prep.observe(rec, signals=not replay)
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

    def _decoded(self, lines: Sequence[bytes], replay: bool = False) -> tuple[list[CallRecord], list[FeedbackRecord]]:
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
                        prep.observe(rec, signals=not replay), nul=NUL_JSON in line, size=len(line)))
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
