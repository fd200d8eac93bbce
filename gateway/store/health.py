"""Whether the store is reachable, as the writer and the feedback handler find out by using it.

One log line per change of state (down / up again), never one per failed request: a 30 s outage
used to write a traceback per feedback post (6 MB of log in a minute). `unavailable(exc)` tells an
outage (connection refused or lost, server shutting down, disk full, database locked) from a row
the database refuses (a NUL character, an unencodable string): the first is retried later, the
second is isolated and quarantined.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# PostgreSQL SQLSTATE classes that blame the row, not the server: data exception, integrity
# constraint violation, program limit exceeded (a value too large).
_ROW_CLASSES = ("22", "23", "54")


def unavailable(exc: BaseException) -> bool:
    """True when `exc` means the store cannot be used now; False when it refuses this row."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] not in _ROW_CLASSES
    if isinstance(exc, sqlite3.OperationalError):
        return True  # locked, disk full, I/O error, cannot open
    # a lone surrogate the driver cannot encode, a value out of range: the row; anything else
    # (connection lost, pool closed, timeout) is treated as an outage
    return not isinstance(exc, UnicodeError | ValueError | TypeError | OverflowError | sqlite3.IntegrityError
                          | sqlite3.DataError | sqlite3.InterfaceError | sqlite3.ProgrammingError)


@dataclass(slots=True)
class StoreHealth:
    """The store's state as last seen: up, down since when and why."""

    up: bool = True
    since: float = 0.0  # unix time of the last change
    last_error: str | None = None
    outages: int = 0

    def failed(self, exc: BaseException, where: str) -> None:
        """A use of the store failed because it is unavailable; logs on the change to down only."""
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.up:
            self.up = False
            self.since = time.time()
            self.outages += 1
            log.warning("store unavailable (%s, during %s); rows are spilled and feedback accepted "
                        "until it is back", self.last_error, where)

    def ok(self) -> None:
        """A use of the store succeeded; logs on the change to up only."""
        if not self.up:
            log.warning("store reachable again after %.1f s", time.time() - self.since)
            self.up = True
            self.since = time.time()
            self.last_error = None
