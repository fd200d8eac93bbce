"""Fenced artifact writes: the scheduled learner writes artifacts only while its lease is confirmed.

The learner lease (learners/lease.py) says which replica runs the scheduled cycles, but a holder
can lose it mid-cycle (a stalled loop, a cut connection) while a successor starts its own cycle
for the same route. `FencedStore` wraps the store the scheduled cycles and canary decisions
write through: before each artifact write (a new version, a state transition, an annotation) it
asks the lease's backend to confirm this replica still holds it with its fencing token, and raises
`LeaseLost` otherwise, so a deposed learner's cycle ends before it can write over its successor's.
Reads pass straight through. A person's controls (console, CLI, admin API) use the plain store.

A cycle (scheduled, or on demand through `POST /admin/learn`) also holds its route's cycle lock
(learners/route_lock.py): its writes, the routing learner's policy writes included, are fenced by
that hold, and a scheduled cycle's by the lease as well (`AllOf`).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.store.base import Store
from gateway.store.records import ArtifactRecord, Transition


class LeaseLost(RuntimeError):
    """This replica no longer holds the learner lease: its scheduled work stops."""


class Fence(Protocol):
    """What writes are checked against: a learner lease (learners/lease.py) or a route's cycle hold."""

    @property
    def fence(self) -> int: ...

    async def confirm(self) -> bool:
        """Whether this replica still holds it (one round trip to its backend)."""
        ...


class AllOf:
    """Confirmed only while every one of `fences` is (a scheduled cycle: the lease and its route's hold)."""

    def __init__(self, *fences: Fence) -> None:
        self._fences = fences

    @property
    def fence(self) -> int:
        """The last fence's token (the route's hold, for a scheduled cycle)."""
        return self._fences[-1].fence

    async def confirm(self) -> bool:
        """Every fence confirms, in order."""
        for f in self._fences:
            if not await f.confirm():
                return False
        return True


class FencedStore:
    """`store` with its artifact writes checked against `lease` (see the module docstring)."""

    def __init__(self, store: Store, lease: Fence) -> None:
        self._store = store
        self._lease = lease
        self.refused = 0  # writes refused because the lease was lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def _check(self, what: str) -> None:
        if not await self._lease.confirm():
            self.refused += 1
            raise LeaseLost(f"learner lease or cycle lock lost (fencing token {self._lease.fence}): {what} not written")

    async def save_artifact(self, a: ArtifactRecord) -> None:
        """`Store.save_artifact`, fenced."""
        await self._check(f"artifact {a.route}/{a.kind}/{a.version}")
        await self._store.save_artifact(a)

    async def create_artifact(self, a: ArtifactRecord, created: Transition) -> bool:
        """`Store.create_artifact`, fenced."""
        await self._check(f"new artifact {a.route}/{a.kind}/{a.version}")
        return await self._store.create_artifact(a, created)

    async def transition(self, t: Transition) -> None:
        """`Store.transition`, fenced."""
        await self._check(f"transition {t.route}/{t.kind}/{t.version} -> {t.to_state}")
        await self._store.transition(t)
