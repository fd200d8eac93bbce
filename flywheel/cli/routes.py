"""`flywheel routes report ROUTE`: traffic share, quality, cost and latency per variant over time.

Reads the store named by config.toml's `[store] url` directly (no gateway needed); the figures
are defined in gateway/reports/route_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from flywheel.cli.config_cmd import existing_store_or_report, settings_or_report
from gateway.capture.quality import check_metric
from gateway.reports.route_report import (
    RouteReport,
    format_report,
    parse_duration,
    route_metric,
    route_report,
    route_variants,
)
from gateway.store import open_store


async def _load(url: str, route: str, window_s: float, windows: int, metric: str, variants: list[str]) -> RouteReport:
    store = open_store(url)
    try:
        await store.migrate()
        return await route_report(store, route, window_s=window_s, windows=windows, metric=metric, variants=variants)
    finally:
        await store.close()


def _report(args: argparse.Namespace) -> int:
    settings = settings_or_report(args)
    if settings is None:
        return 2
    if args.route not in settings.routes and args.route not in settings.models:
        print(f"unknown route '{args.route}' (routes: {', '.join(settings.routes) or 'none'})", file=sys.stderr)
        return 2
    try:
        window_s = parse_duration(args.window)
        metric = check_metric(args.metric or route_metric(settings, args.route))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    url = existing_store_or_report(settings, args)
    if url is None:
        return 2
    report = asyncio.run(_load(url, args.route, window_s, args.windows, metric,
                               route_variants(settings, args.route)))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_report(report))
    return 0


def register(sub: Any) -> None:
    routes = sub.add_parser("routes", help="routes: reports").add_subparsers(dest="routes_command", required=True)
    report = routes.add_parser("report", help="share, quality, cost per (successful) call, p50 latency per variant")
    report.add_argument("route")
    report.add_argument("--window", default="1h", help="window length: 90, 15m, 1h, 1d (default 1h)")
    report.add_argument("--windows", type=int, default=24, help="how many windows back from now (default 24)")
    report.add_argument("--metric", help="quality metric: rating, score, signals, any (default: the route's)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(func=_report)
