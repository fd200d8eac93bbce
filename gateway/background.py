"""Background tasks that services own beside the request path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Protocol


class Service(Protocol):
    """Something that runs beside the request path for the gateway's lifetime (learners, retention…)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel every task, then wait until each has really finished (its cleanup has run)."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
