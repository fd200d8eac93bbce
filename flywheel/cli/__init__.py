"""The `flywheel` command. Each module in this package registers its own subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from flywheel.cli import config_cmd, data, demo, learn, routes, serve

# Every entry registers its subcommands on the parser; a new command group adds one line here.
GROUPS = (serve.register, config_cmd.register, data.register, routes.register, learn.register,
          demo.register)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description="Flywheel LLM gateway")
    parser.add_argument("--config", default="config.toml", help="path of config.toml")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in GROUPS:
        register(sub)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, parsed."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after an option for a `nargs="*"` positional
    # (`prompts diff ROUTE --kind index A B`): hand such leftovers to it, refuse anything else.
    if extra and isinstance(getattr(args, "versions", None), list) and not any(e.startswith("-") for e in extra):
        args.versions += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    result: int = args.func(args)
    return result
