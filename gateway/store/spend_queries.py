"""Spend per virtual key, route and day, aggregated by the database (`flywheel keys report`,
`GET /admin/keys`, and the in-process budget's starting point). Mixed into `SqlStore`."""

from __future__ import annotations

from abc import abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from gateway.store.dialect import Conn, Dialect

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One key's calls on one route during one UTC day."""

    key_id: str
    route: str
    day: float  # the day's start, epoch seconds (UTC)
    calls: int
    tokens: int
    cost_usd: float


class SpendQueries:
    """Spend aggregation; `SqlStore` supplies `_read` and `dialect`."""

    dialect: Dialect

    @abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Conn]: ...

    async def spend_by_key(self, *, since: float, key_id: str | None = None) -> list[SpendRow]:
        """Calls made with a virtual key since `since` (a UTC day start), per (key, route, day)."""
        expr = "(created_at - ?) / ?"
        day = f"CAST({expr} AS INTEGER)" if self.dialect.name == "sqlite" else f"CAST(FLOOR({expr}) AS INTEGER)"
        where = "created_at >= ? AND key_id IS NOT NULL" + (" AND key_id = ?" if key_id is not None else "")
        args: list[object] = [float(since), DAY_S, float(since)] + ([key_id] if key_id is not None else [])
        sql = (f"SELECT key_id, route, {day} AS d, COUNT(*), "
               "COALESCE(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)), 0), "
               f"COALESCE(SUM(cost_usd), 0) FROM calls WHERE {where} "
               "GROUP BY key_id, route, d ORDER BY d, key_id, route")
        async with self._read() as conn:
            rows = await conn.fetch(sql, *args)
        return [SpendRow(r[0], r[1], since + int(r[2]) * DAY_S, int(r[3]), int(r[4]), float(r[5])) for r in rows]
