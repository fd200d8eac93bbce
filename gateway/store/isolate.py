"""One bad row must never block the rows around it.

When a batch insert fails and the store is reachable (`health.unavailable` says the row is to
blame, not the server), the writer retries its rows one by one: rows that go in are stored, a row
refused for a NUL character is stored with the NULs replaced (nul.py), and a row refused even so
is quarantined (kept in the spill's `.rejected` file for an operator, counted, one log line).
Should the store become unavailable midway, the rows not yet tried are handed back for the spill.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.store.base import Store
from gateway.store.health import StoreHealth, unavailable
from gateway.store.nul import call_without_nul, feedback_without_nul
from gateway.store.records import CallRecord, FeedbackRecord

log = logging.getLogger(__name__)

Spillable = CallRecord | FeedbackRecord
_R = TypeVar("_R", CallRecord, FeedbackRecord)


@dataclass(slots=True)
class Isolated:
    """What a row-by-row retry did with each row."""

    written: list[Spillable] = field(default_factory=list)
    repaired: int = 0  # written after NUL characters were replaced
    quarantined: list[Spillable] = field(default_factory=list)
    unsaved: list[Spillable] = field(default_factory=list)  # the store went away: spill these


async def insert_one_by_one(store: Store, records: Sequence[Spillable], health: StoreHealth) -> Isolated:
    """Insert `records` one at a time (see the module docstring)."""
    out = Isolated()
    for i, rec in enumerate(records):
        if isinstance(rec, CallRecord):
            verdict = await _try(lambda r: store.insert_calls([r]), rec, call_without_nul, health)
        else:
            verdict = await _try(store.insert_feedback, rec, feedback_without_nul, health)
        if verdict == "down":
            out.unsaved.extend(records[i:])
            break
        if verdict == "bad":
            out.quarantined.append(rec)
            log.error("store refused %s %s even with NULs replaced; quarantined",
                      "call" if isinstance(rec, CallRecord) else "feedback", rec.id)
            continue
        out.written.append(rec)
        out.repaired += verdict == "repaired"
    return out


async def _try(insert: Callable[[_R], Awaitable[None]], rec: _R, repair: Callable[[_R], _R],
               health: StoreHealth) -> str:
    """"ok", "repaired", "bad" (refused as is and repaired) or "down" (the store is unavailable)."""
    try:
        await insert(rec)
        return "ok"
    except Exception as e:
        if unavailable(e):
            health.failed(e, "a row-by-row retry")
            return "down"
    fixed = repair(rec)
    if fixed is rec:
        return "bad"
    try:
        await insert(fixed)
        return "repaired"
    except Exception as e:
        if unavailable(e):
            health.failed(e, "a row-by-row retry")
            return "down"
        return "bad"
