"""`flywheel check-config` and `flywheel keys new`."""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any

from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.http.auth import hash_key


def settings_or_report(args: argparse.Namespace) -> Settings | None:
    """config.toml for a CLI command, or None after printing why it is invalid."""
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


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
