"""Spend per virtual key: per key this period against its budget, and per key, route and day.

Read from the store's logged cost (`Store.spend_by_key`), so it holds whichever replica served the
calls; `GET /admin/keys` adds the live figure the limiter enforces. `flywheel keys report` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.settings import Settings
from gateway.limits.base import DAY_S, period_start
from gateway.store.base import Store
from gateway.store.spend_queries import SpendRow


@dataclass(frozen=True, slots=True)
class KeySpend:
    """One configured key: its limits, budget and what it spent in the budget's current period."""

    key: str
    routes: list[str]
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: str
    disabled: bool
    spent_usd: float  # this period (day or month, UTC) from the store
    calls: int


@dataclass(frozen=True, slots=True)
class KeyReport:
    keys: list[KeySpend]
    rows: list[SpendRow]  # per key, route and day, over the report's days
    since: float


async def key_report(store: Store, settings: Settings, days: int = 7) -> KeyReport:
    """Spend per key over the last `days` UTC days (today included) and in each budget's period."""
    since = period_start("day") - (max(1, days) - 1) * DAY_S
    month = period_start("month")
    rows = await store.spend_by_key(since=min(since, month))
    # disabled at run time (gateway/keyring.py) counts like disabled in config.toml
    off = {st.name for st in await store.key_states() if st.disabled}
    keys = []
    for name, ks in settings.auth.keys.items():
        start = period_start(ks.budget_period)
        mine = [r for r in rows if r.key_id == name and r.day >= start]
        keys.append(KeySpend(name, list(ks.routes), ks.rpm, ks.tpm, ks.budget_usd, ks.budget_period,
                             ks.disabled or name in off,
                             sum(r.cost_usd for r in mine), sum(r.calls for r in mine)))
    return KeyReport(keys, [r for r in rows if r.day >= since], since)


def _usd(x: float) -> str:
    return f"${x:.4f}"


def format_key_report(report: KeyReport) -> str:
    """The report as two plain-text tables."""
    import time

    lines = [f"{'key':<20} {'budget':>12} {'period':<6} {'spent':>12} {'calls':>7} {'rpm':>6} {'tpm':>8} state"]
    for k in report.keys:
        budget = f"${k.budget_usd:.4f}" if k.budget_usd is not None else "-"
        lines.append(f"{k.key:<20} {budget:>12} {k.budget_period:<6} {_usd(k.spent_usd):>12} {k.calls:>7} "
                     f"{k.rpm or '-':>6} {k.tpm or '-':>8} {'disabled' if k.disabled else 'active'}")
    lines += ["", f"{'day':<10} {'key':<20} {'route':<20} {'calls':>7} {'tokens':>9} {'cost':>12}"]
    for r in report.rows:
        day = time.strftime("%Y-%m-%d", time.gmtime(r.day))
        lines.append(f"{day:<10} {r.key_id:<20} {r.route:<20} {r.calls:>7} {r.tokens:>9} {_usd(r.cost_usd):>12}")
    return "\n".join(lines)
