"""`flywheel prompts publish ROUTE FILE --note WHY`: a hand-written template version.

It goes the way a learned version does (learners/controls.py): a candidate marked as authored by
a person, guardrails, the offline evaluation gate against the current version, then the canary
(or rejection, with the reason). With `--url` it asks a running gateway (the console's JSON
endpoint, with the admin key from `[auth] admin_key_env`), else it runs in-process against the
store; a running gateway then picks the change up within `[learners] refresh_s`.
(An edited seed template file is only read on the first start: this is how a person's edit ships.)
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from flywheel.cli.config_cmd import existing_store_or_report, settings_or_report
from flywheel.cli.learn import _in_process, _known_route
from gateway.console.session import key_id

if TYPE_CHECKING:
    from learners.loop import LearningLoop


def _who(admin_key: str | None) -> str:
    """The author recorded: the admin key's id when the key is at hand, else the local user."""
    return key_id(admin_key) if admin_key else f"cli:{getpass.getuser()}"


def _remote(url: str, route: str, body: dict[str, str], key: str | None, timeout: float) -> Any:
    req = urllib.request.Request(f"{url.rstrip('/')}/console/api/routes/{route}/publish", data=orjson.dumps(body),
                                 method="POST", headers={"content-type": "application/json",
                                                         **({"authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return orjson.loads(resp.read())["result"]
    except urllib.error.HTTPError as exc:
        detail = orjson.loads(exc.read() or b"{}").get("error", {}).get("message", exc.reason)
        raise SystemExit(f"publish: HTTP {exc.code}: {detail}") from None


def _publish(args: argparse.Namespace) -> int:
    settings = settings_or_report(args)
    if settings is None:
        return 2
    try:
        source = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if not args.note.strip():
        print("--note must say why", file=sys.stderr)
        return 2
    env = settings.auth.admin_key_env
    key = (os.environ.get(env) or None) if env else None
    if args.url:
        decision = _remote(args.url, args.route, {"source": source, "note": args.note}, key, args.timeout)
    else:
        if not _known_route(settings, args.route) or existing_store_or_report(settings, args) is None:
            return 2
        from gateway.reports.explain import to_json

        async def run(learning: LearningLoop) -> Any:
            return to_json(await learning.publish_template(args.route, source, who=_who(key), note=args.note))

        import asyncio

        try:
            decision = asyncio.run(_in_process(settings, args.config, run))
        except (ValueError, KeyError) as exc:
            print(f"publish refused: {exc}", file=sys.stderr)
            return 1
    print(f"{decision['kind']} {decision['version']}: {decision['action']} - {decision['reason']}")
    return 0 if decision["action"] in ("canary", "promoted") else 1


def register(sub: Any) -> None:
    """Add `publish` to the `prompts` command group (registered by flywheel/cli/learn.py)."""
    prompts = sub.choices["prompts"]
    group = next(a for a in prompts._actions if isinstance(a, argparse._SubParsersAction))
    publish = group.add_parser("publish", help="a hand-written template version: evaluated, then canaried")
    publish.add_argument("route")
    publish.add_argument("file", help="the template text (jinja2: {{ route }}, {{ today }}); learned sections are kept")
    publish.add_argument("--note", required=True, help="why: recorded in the artifact log with the author")
    publish.add_argument("--url", help="a running gateway (e.g. http://127.0.0.1:8080); default: in-process")
    publish.add_argument("--timeout", type=float, default=600.0)
    publish.set_defaults(func=_publish)
