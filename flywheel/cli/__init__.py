"""The `flywheel` command. Each module in this package registers its own subcommands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from flywheel.cli import config_cmd, data, demo, learn, prompts, routes, serve

# Every entry registers its subcommands on the parser; a new command group adds one line here.
GROUPS = (serve.register, config_cmd.register, data.register, routes.register, learn.register,
          demo.register, prompts.register)  # prompts.register extends learn's `prompts` group: after it


CONFIG_HELP = "path of config.toml (default: $FLYWHEEL_CONFIG, else ./config.toml)"


def _accept_config_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand its own `--config`, so it may come after the subcommand too.

    SUPPRESS keeps a subcommand that was not given one from overwriting the top-level value.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--config" in a.option_strings for a in child._actions):
                    child.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
                _accept_config_everywhere(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description="Flywheel LLM gateway")
    parser.add_argument("--config", default=os.environ.get("FLYWHEEL_CONFIG") or "config.toml", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in GROUPS:
        register(sub)
    _accept_config_everywhere(parser)
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
