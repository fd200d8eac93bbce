"""`flywheel keys report`: spend per key (against its budget), and per key, route and day;
`flywheel keys disable|enable|rotate KEY`: change a key without a restart; `flywheel keys log`.

Reads and writes the store named by config.toml's `[store] url` directly (no gateway needed); the
figures come from gateway/reports/key_spend.py (`GET /admin/keys` and `/admin/keys/report` serve
the same) and the changes go through gateway/keyring.py, like the admin API's: every running
replica applies them within `[auth] refresh_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.errors import GatewayError
from gateway.keyring import KeyRing
from gateway.reports.key_spend import KeyReport, format_key_report, key_report
from gateway.store import open_store
from gateway.store.base import Store
from gateway.store.key_states import KeyEvent


async def _load(settings: Settings, days: int) -> KeyReport:
    store = open_store(settings.store.url)
    try:
        await store.migrate()
        return await key_report(store, settings, days=days)
    finally:
        await store.close()


T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings | None:
    # not config_cmd.settings_or_report: config_cmd registers this module (no import circle)
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


async def _with_ring(settings: Settings, act: Callable[[KeyRing, Store], Awaitable[T]]) -> T:
    store = open_store(settings.store.url)
    try:
        await store.migrate()
        return await act(KeyRing(lambda: settings, lambda: store), store)
    finally:
        await store.close()


def _change(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    who = args.who or f"cli:{getpass.getuser()}"

    async def act(ring: KeyRing, _: Store) -> str:
        if args.keys_command == "rotate":
            rotated = await ring.rotate(args.key, who=who, note=args.note, grace_s=args.grace)
            until = (f"; the old secret works until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t))}"
                     if (t := rotated.old_valid_until) else "; the old secret stops working now")
            return f"key {args.key} rotated{until}\nnew secret (shown once, give it to the app): {rotated.secret}"
        await ring.set_disabled(args.key, args.keys_command == "disable", who=who, note=args.note)
        return f"key {args.key} {args.keys_command}d"

    try:
        print(asyncio.run(_with_ring(settings, act)))
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"running gateways apply it within [auth] refresh_s = {settings.auth.refresh_s:g} s")
    return 0


def _log(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2

    async def act(_: KeyRing, store: Store) -> list[KeyEvent]:
        return await store.key_events(args.key)

    for e in asyncio.run(_with_ring(settings, act)):
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at))
        print(f"{at}  {e.name:<16} {e.action:<8} {e.who}{'  ' + e.note if e.note else ''}")
    return 0


def _report(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    report = asyncio.run(_load(settings, args.days))
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_key_report(report))
    return 0


def register(keys: Any) -> None:
    """Add `report`, `disable`, `enable`, `rotate` and `log` to the `flywheel keys` subcommands."""
    report = keys.add_parser("report", help="spend per key (against its budget), per route and per day")
    report.add_argument("--days", type=int, default=7, help="days back, today included (default 7)")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.set_defaults(func=_report)
    for action, text in (("disable", "refuse a key on every replica (within [auth] refresh_s)"),
                         ("enable", "accept a key disabled with `keys disable` again"),
                         ("rotate", "give a key a new secret (printed once); the old one stops working")):
        p = keys.add_parser(action, help=text)
        p.add_argument("key", help="the key's name in config.toml's [auth.keys]")
        p.add_argument("--who", help="recorded as who did it (default cli:$USER)")
        p.add_argument("--note", default="", help="recorded as why")
        if action == "rotate":
            p.add_argument("--grace", type=float, default=0.0, metavar="SECONDS",
                           help="keep the old secret working this long (default 0: stops at once)")
        p.set_defaults(func=_change)
    log = keys.add_parser("log", help="who disabled, enabled or rotated keys, and when")
    log.add_argument("key", nargs="?", help="one key (default all)")
    log.set_defaults(func=_log)
