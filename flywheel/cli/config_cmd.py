"""`flywheel check-config` and `flywheel keys new`."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.http.auth import hash_key
from gateway.store import sqlite_path


def settings_or_report(args: argparse.Namespace) -> Settings | None:
    """config.toml for a CLI command, or None after printing why it is invalid."""
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def existing_store_or_report(settings: Settings, args: argparse.Namespace) -> str | None:
    """The store URL for a command that reads an existing store, or None after saying why not.

    A SQLite file that does not exist means a wrong `--config` or working directory far more
    often than an empty store: opening it would create a new empty database and report nothing.
    """
    url = settings.store.url
    if not url.startswith("sqlite:"):
        return url
    try:
        path = sqlite_path(url)
    except ValueError as exc:
        print(f"store.url: {exc}", file=sys.stderr)
        return None
    if path != ":memory:" and not Path(path).is_file():
        print(f"no database at {path} (store.url in {args.config}); nothing to read there. Check --config, "
              "or start the gateway once (`flywheel serve`) to create it.", file=sys.stderr)
        return None
    return url


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 1
    print(f"{args.config}: ok ({len(settings.providers)} providers, {len(settings.models)} models, "
          f"{len(settings.routes)} routes)")
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    key = "fw-" + secrets.token_urlsafe(24)
    print(f"key (shown once, give it to the app): {key}\n")
    print(f"[auth.keys.{args.name}]\nhash = \"sha256:{hash_key(key)}\"\nroutes = [\"*\"]")
    return 0


def register(sub: Any) -> None:
    sub.add_parser("check-config", help="validate config.toml and print every problem").set_defaults(
        func=_check_config)
    keys = sub.add_parser("keys", help="virtual keys").add_subparsers(dest="keys_command", required=True)
    new = keys.add_parser("new", help="make a virtual key and print its config entry")
    new.add_argument("name")
    new.set_defaults(func=_keys_new)
    from flywheel.cli import keys as keys_cmd  # `keys report` (spend and budgets) lives in its own module

    keys_cmd.register(keys)
