"""`flywheel serve`: start the gateway."""

from __future__ import annotations

import argparse
from typing import Any

from flywheel.cli.config_cmd import settings_or_report


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from flywheel.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_or_report(args)
    if settings is None:
        return 2
    app = create_app(settings, config_path=args.config)
    uvicorn.run(app, host=args.host or settings.server.host, port=args.port or settings.server.port,
                log_level="warning", access_log=False, loop="uvloop", http="httptools",
                timeout_graceful_shutdown=30)
    return 0


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="start the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_serve)
