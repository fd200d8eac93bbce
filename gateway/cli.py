"""The `flywheel` command: serve, check-config, keys."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence

from gateway.auth import hash_key
from gateway.settings import ConfigError, load_settings


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    app = create_app(settings, config_path=args.config)
    uvicorn.run(app, host=args.host or settings.server.host, port=args.port or settings.server.port,
                log_level="warning", access_log=False, loop="uvloop", http="httptools",
                timeout_graceful_shutdown=30)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description="Flywheel LLM gateway")
    parser.add_argument("--config", default="config.toml", help="path of config.toml")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_serve)
    sub.add_parser("check-config", help="validate config.toml and print every problem").set_defaults(func=_check_config)
    keys = sub.add_parser("keys", help="virtual keys").add_subparsers(dest="keys_command", required=True)
    new = keys.add_parser("new", help="make a virtual key and print its config entry")
    new.add_argument("name")
    new.set_defaults(func=_keys_new)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
