"""The writer's append-only spill file: rows the database could not take (yet).

JSON lines, one record per line (`{"kind": "call"|"feedback", "record": {...}}`), fsync'd
per append. Re-ingesting first *claims* the file by renaming it to `<name>.ingesting`, so
new spills go to a fresh file while the claimed one is read; the claimed file is deleted
only after every row in it was inserted. Lines that cannot be decoded (a torn last line
after a crash) and rows the writer refuses (its prepare hook raised) are kept, never
dropped, in `<name>.rejected` for an operator.

All methods do blocking file I/O: call them from a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.store.records import Attempt, CallRecord, FeedbackRecord, escalation_from_json

log = logging.getLogger(__name__)

Spillable = CallRecord | FeedbackRecord
_T = TypeVar("_T")

_CALL_NAMES = tuple(f.name for f in fields(CallRecord))
_CALL_FIELDS = frozenset(_CALL_NAMES)
_call_values = operator.itemgetter(*_CALL_NAMES)
_ATTEMPT_NAMES = tuple(f.name for f in fields(Attempt))
_ATTEMPT_FIELDS = frozenset(_ATTEMPT_NAMES)
_attempt_values = operator.itemgetter(*_ATTEMPT_NAMES)
_FEEDBACK_FIELDS = frozenset(f.name for f in fields(FeedbackRecord))


def encode(rec: Spillable) -> bytes:
    """One spill line (with its newline) for a record."""
    kind = "call" if isinstance(rec, CallRecord) else "feedback"
    return orjson.dumps({"kind": kind, "record": rec}, default=str) + b"\n"


def decode(line: bytes) -> Spillable:
    """Inverse of `encode`; fields this version does not know are ignored. Raises ValueError."""
    try:
        obj = orjson.loads(line)
        data: dict[str, Any] = obj["record"]
        if obj["kind"] == "call":
            attempts: list[dict[str, Any]] = data.get("attempts", [])
            escalation = data.get("escalation")
            rec = _positional(CallRecord, data, _CALL_FIELDS, _call_values)
            rec.attempts = [_positional(Attempt, a, _ATTEMPT_FIELDS, _attempt_values) for a in attempts]
            rec.escalation = escalation_from_json(escalation)
            return rec
        if obj["kind"] == "feedback":
            return FeedbackRecord(**{k: v for k, v in data.items() if k in _FEEDBACK_FIELDS})
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"undecodable spill line: {e}") from e
    raise ValueError(f"unknown spill record kind {obj['kind']!r}")


def _positional(cls: Callable[..., _T], data: dict[str, Any], names: frozenset[str],
                values: Callable[[dict[str, Any]], tuple[Any, ...]]) -> _T:
    # A line this version wrote (the writer's queue) has exactly the class's fields: built
    # positionally, since orjson's keys are not interned and matching 29 of them as keywords
    # cost 5 us a call. Older or newer lines drop the fields this version does not know.
    if data.keys() == names:
        return cls(*values(data))
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(slots=True)
class SpillBatch:
    """Up to n decoded records from a claimed file, and the lines that failed to decode."""

    records: list[Spillable]
    bad_lines: list[bytes]


def _fsync_dir(path: Path) -> None:
    # A rename or unlink is durable only once the directory entry is on disk.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpillFile:
    """The spill file at `path`, its claimed twin and its rejected-rows file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.claimed = self.path.with_name(self.path.name + ".ingesting")
        self.rejected = self.path.with_name(self.path.name + ".rejected")

    def append(self, records: Sequence[Spillable]) -> None:
        """Append records and fsync before returning."""
        self._append(self.path, [encode(r) for r in records])

    def reject(self, lines: Sequence[bytes]) -> None:
        """Keep lines the writer will not store in the rejected file."""
        self._append(self.rejected, [ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines])

    def _append(self, path: Path, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(path)

    def has_data(self) -> bool:
        """True when a spill or a claimed file holds rows."""
        return any(p.exists() and p.stat().st_size > 0 for p in (self.claimed, self.path))

    def claim(self) -> Path | None:
        """The file to re-ingest: an unfinished claim first, else the spill file renamed."""
        if self.claimed.exists():
            return self.claimed
        if self.path.exists() and self.path.stat().st_size > 0:
            os.replace(self.path, self.claimed)
            _fsync_dir(self.claimed)
            return self.claimed
        return None

    def release(self, path: Path) -> None:
        """Delete a claimed file once all its rows are stored."""
        path.unlink(missing_ok=True)
        _fsync_dir(path)

    @staticmethod
    def read(path: Path, n: int) -> Generator[SpillBatch, None, None]:
        """Batches of up to n records from `path`, in file order."""
        batch = SpillBatch([], [])
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    batch.records.append(decode(line))
                except ValueError:
                    log.warning("spill file %s: keeping an undecodable line in the rejected file", path)
                    batch.bad_lines.append(line)
                if len(batch.records) >= n:
                    yield batch
                    batch = SpillBatch([], [])
        if batch.records or batch.bad_lines:
            yield batch
