"""`flywheel serve`: start the gateway.

The listening address is `--host`/`--port`, else `$FLYWHEEL_HOST`/`$FLYWHEEL_PORT`, else
`[server] host/port`; it is logged at start. A changed host or port in a reloaded config.toml
needs a restart (the reload logs so).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flywheel.cli.config_cmd import settings_or_report
from gateway.config.settings import ConfigError, Settings


def redact_url(url: str) -> str:
    """A store URL without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def listen_address(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> tuple[str, int]:
    """Host and port to serve on: the command line, then the environment, then config.toml."""
    host = args.host or env.get("FLYWHEEL_HOST") or settings.server.host
    port_text = env.get("FLYWHEEL_PORT")
    try:
        env_port = int(port_text) if port_text else None
    except ValueError:
        raise ValueError(f"FLYWHEEL_PORT must be a port number, got {port_text!r}") from None
    port = args.port if args.port is not None else env_port if env_port is not None else settings.server.port
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be within 0..65535, got {port}")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_problem(host: str, settings: Settings, env: Mapping[str, str], insecure_open: bool) -> str | None:
    """Why serving on `host` would expose an unauthenticated gateway, or None when it is safe (or allowed)."""
    if is_loopback(host) or insecure_open or settings.server.insecure_open:
        return None
    key_env = settings.auth.admin_key_env
    if key_env and env.get(key_env):
        return None
    return (f"refusing to listen on {host}, which is not a loopback address, without an admin key: set "
            f"${key_env or 'FLYWHEEL_ADMIN_KEY'} (and [auth] admin_key_env), or pass --insecure-open "
            "(or [server] insecure_open = true) to serve it open to the network on purpose")


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from flywheel.app import create_app
    from gateway.http.connections import uvicorn_options
    from gateway.logs import log_format, setup_logging

    settings = settings_or_report(args)
    if settings is None:
        return 2
    try:
        setup_logging(log_format(settings.server.log_format))
        host, port = listen_address(args, settings, os.environ)
    except ValueError as exc:
        print(f"flywheel serve: {exc}", file=sys.stderr)
        return 2
    problem = exposure_problem(host, settings, os.environ, getattr(args, "insecure_open", False))
    if problem is not None:
        logging.getLogger("flywheel.serve").error(problem, extra={"event": "start_refused"})
        print(f"flywheel serve: {problem}", file=sys.stderr)
        return 2
    if not is_loopback(host) and not (settings.auth.admin_key_env and os.environ.get(settings.auth.admin_key_env)):
        logging.getLogger("flywheel.serve").warning(
            "serving %s without an admin key on purpose (--insecure-open): the admin API is open to the network",
            host, extra={"event": "insecure_open"})
    try:
        app = create_app(settings, config_path=args.config)
    except ConfigError as exc:  # e.g. a provider kind whose optional extra is not installed
        print(exc, file=sys.stderr)
        return 2
    logging.getLogger("flywheel.serve").info(
        "listening on http://%s:%d (config %s, store %s)", host if ":" not in host else f"[{host}]", port,
        Path(args.config).resolve(), redact_url(settings.store.url),
        extra={"event": "start", "host": host, "port": port})
    try:
        # [server] connection limits (header size/count/time, keep-alive, connections): gateway/http/connections.py
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, loop="uvloop",
                    timeout_graceful_shutdown=30, **uvicorn_options(settings.server))
    except SystemExit as exc:
        if exc.code:  # start-up failed: exit now, so a supervisor restarts it
            _exit_now(int(exc.code) if isinstance(exc.code, int) else 1)
        raise
    return 0


def _exit_now(code: int) -> None:
    """Exit with `code` even if a half-started gateway left a thread behind (a non-daemon thread or
    a busy executor would otherwise keep the process alive, serving nothing, until SIGTERM)."""
    import logging

    logging.getLogger("flywheel.serve").error("start-up failed: exiting with status %d", code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="start the gateway")
    serve.add_argument("--host", help="address to listen on (default: $FLYWHEEL_HOST, else [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: $FLYWHEEL_PORT, else [server] port)")
    serve.add_argument("--insecure-open", action="store_true",
                       help="serve a non-loopback host without an admin key (the admin API open to the network)")
    serve.set_defaults(func=_serve)
