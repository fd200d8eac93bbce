"""`flywheel keys report`: spend per key (against its budget), and per key, route and day.

Reads the store named by config.toml's `[store] url` directly (no gateway needed); the figures
come from gateway/reports/key_spend.py (`GET /admin/keys` and `/admin/keys/report` serve the same).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.reports.key_spend import KeyReport, format_key_report, key_report
from gateway.store import open_store


async def _load(settings: Settings, days: int) -> KeyReport:
    store = open_store(settings.store.url)
    try:
        await store.migrate()
        return await key_report(store, settings, days=days)
    finally:
        await store.close()


def _report(args: argparse.Namespace) -> int:
    # not config_cmd.settings_or_report: config_cmd registers this module (no import circle)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    report = asyncio.run(_load(settings, args.days))
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_key_report(report))
    return 0


def register(keys: Any) -> None:
    """Add `report` to the `flywheel keys` subcommands."""
    report = keys.add_parser("report", help="spend per key (against its budget), per route and per day")
    report.add_argument("--days", type=int, default=7, help="days back, today included (default 7)")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.set_defaults(func=_report)
