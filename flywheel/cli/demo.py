"""`flywheel demo`: watch a route learn from user feedback, with no API key and no model download."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from flywheel.demo.runner import DemoOptions, run_demo
    from flywheel.demo.view import LiveView, PlainView

    options = DemoOptions(calls=args.calls, window=args.window, seed=args.seed, correct_share=args.correct_share,
                          learn_every=args.learn_every, directory=Path(args.dir), latency_ms=args.latency_ms,
                          embedder=args.embedder)
    try:
        if args.no_live or not sys.stdout.isatty():
            run_demo(options, PlainView())
        else:
            with LiveView() as view:
                run_demo(options, view)
    except RuntimeError as exc:
        print(f"flywheel demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"flywheel demo: interrupted; what was stored so far is in {options.directory}/", file=sys.stderr)
        return 130
    return 0


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="simulated users teach a route; see its accuracy climb (no API key needed)",
        description="Starts the gateway in-process with a simulated upstream, sends simulated users' requests "
                    "(SNIPS intents) through the openai SDK with their feedback, learns every few calls and shows "
                    "the learning curve. The config and store stay in --dir. --config is not used.")
    demo.add_argument("--calls", type=_positive, default=500,
                      help="requests to send (default 500: the 350 questions, then 150 asked again)")
    demo.add_argument("--window", type=_positive, default=50, help="calls per row of the curve (default 50)")
    demo.add_argument("--seed", type=int, default=0, help="order of the questions and the users' choices")
    demo.add_argument("--correct-share", type=_share, default=0.7,
                      help="share of wrong answers that users correct (the rest get a thumbs-down; default 0.7)")
    demo.add_argument("--learn-every", type=_positive, default=25,
                      help="run a learning cycle (POST /admin/learn) every N calls (default 25)")
    demo.add_argument("--dir", default="data/demo", help="where the demo's config.toml and store go (default "
                                                          "data/demo; a previous demo's store there is replaced)")
    demo.add_argument("--latency-ms", type=float, default=5.0, help="simulated model latency per call")
    demo.add_argument("--embedder", choices=("hashing", "static", "minilm"), default=None,
                      help="default: static when its model is on disk, else hashing")
    demo.add_argument("--no-live", action="store_true", help="print lines instead of redrawing the screen")
    demo.set_defaults(func=_demo)
