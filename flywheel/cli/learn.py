"""`flywheel learn ROUTE`, `flywheel prompts log|diff ROUTE`, `flywheel rollback ROUTE [VERSION]`.

`prompts log` and `prompts diff` read the store named by config.toml directly. `learn` and
`rollback` call a running gateway's admin API when given `--url` (the admin key is read from the
environment variable `[auth] admin_key_env` names), and otherwise run in-process against the
store; a running gateway picks such changes up within `[learners] refresh_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flywheel.cli.config_cmd import existing_store_or_report, settings_or_report
from gateway.config.settings import Settings

if TYPE_CHECKING:
    from gateway.store.artifacts import ArtifactRegistry
    from learners.loop import LearningLoop

T = TypeVar("T")


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


async def _with_registry(store_at: Settings | str, fn: Callable[[ArtifactRegistry], Awaitable[T]]) -> T:
    """Run `fn` on the artifact registry of the store at a URL (or config.toml's `[store] url`)."""
    from gateway.store import open_store
    from gateway.store.artifacts import ArtifactRegistry

    store = open_store(store_at if isinstance(store_at, str) else store_at.store.url)
    try:
        await store.migrate()
        return await fn(ArtifactRegistry(store))
    finally:
        await store.close()


async def _in_process(settings: Settings, config: str, fn: Callable[[LearningLoop], Awaitable[T]]) -> T:
    """Run `fn` against the learners of a gateway that is not served: store and learners only, no writer."""
    from gateway.serve.runtime import close_unused
    from gateway.server import Gateway
    from gateway.store import open_store
    from learners.loop import LearningLoop

    gw = Gateway(settings, Path(config))
    gw.store = open_store(settings.store.url)
    learning = LearningLoop(gw)
    try:
        await gw.store.migrate()
        await learning.open()
        return await fn(learning)
    finally:
        await learning.stop()
        await gw.store.close()
        await close_unused(gw.runtime, None)


def _known_route(settings: Settings, route: str) -> bool:
    """Whether config.toml has this route; prints the known ones when not."""
    if route in settings.routes:
        return True
    print(f"unknown route '{route}' (routes in config: {', '.join(settings.routes) or 'none'})", file=sys.stderr)
    return False


def _admin(args: argparse.Namespace, settings: Settings, path: str, body: dict[str, Any]) -> Any:
    env = settings.auth.admin_key_env
    key = os.environ.get(env) if env else None
    req = urllib.request.Request(args.url.rstrip("/") + path, data=orjson.dumps(body), method="POST",
                                 headers={"content-type": "application/json",
                                          **({"authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = orjson.loads(exc.read() or b"{}").get("error", {}).get("message", exc.reason)
        raise SystemExit(f"{path}: HTTP {exc.code}: {detail}") from None


# -- flywheel learn -----------------------------------------------------------------------------
def print_report(report: dict[str, Any], console: Console) -> None:
    """A learning report, readably."""
    console.print(f"[bold]route {report['route']}[/]: {report['examples']} curated examples "
                  f"({report['train']} train, {report['heldout']} held-out) in {report['duration_s']:.1f}s; "
                  f"{report['eval_calls']} evaluation calls, ${report['eval_cost_usd']:.4f}")
    skipped = report.get("eval_skipped") or []
    console.print(f"  evaluation spend: {report['eval_calls']} calls replayed, {report.get('eval_cached', 0)} "
                  f"from the cache, {len(skipped)} candidates skipped, {report.get('eval_saved', 0)} case replays "
                  "saved by successive halving")
    for line in [*(report.get("eval_halving") or []), *skipped]:
        console.print(f"    {line}", style="dim")
    for d in report["rollout"]:
        console.print(f"  {d['kind']} {d['version']}: [bold]{d['action']}[/] - {d['reason']}")
    for c in report["candidates"]:
        colour = {"canary": "yellow", "promoted": "green", "rejected": "red"}.get(c["outcome"], "white")
        console.print(f"  {c['kind']} {c['version']}: [{colour}]{c['outcome']}[/] - {c['reason']}")
        console.print(f"      {c['note']}", style="dim")
    for s in report["skipped"]:
        console.print(f"  {s}", style="dim")


def _learn(args: argparse.Namespace) -> int:
    settings = settings_or_report(args)
    if settings is None:
        return 2
    if args.url:
        report = _admin(args, settings, "/admin/learn", {"route": args.route})
    else:
        if not _known_route(settings, args.route) or existing_store_or_report(settings, args) is None:
            return 2

        async def run(learning: LearningLoop) -> dict[str, Any]:
            return (await learning.learn_route(args.route)).to_json()

        with Console(stderr=True).status(f"learning route {args.route}: candidates, evaluation, rollout…"):
            report = asyncio.run(_in_process(settings, args.config, run))
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_report(report, Console())
    return 0


# -- flywheel rollback --------------------------------------------------------------------------
def _rollback(args: argparse.Namespace) -> int:
    settings = settings_or_report(args)
    if settings is None:
        return 2
    body: dict[str, Any] = {"reason": args.reason, **({"version": args.version} if args.version else {})}
    if args.url:
        decision = _admin(args, settings, f"/admin/routes/{args.route}/rollback", body)
    else:
        from gateway.reports.explain import to_json
        from gateway.store.artifacts import TransitionRefused

        async def run(learning: LearningLoop) -> Any:
            return to_json(await learning.rollback(args.route, args.version, args.reason))

        if not _known_route(settings, args.route) or existing_store_or_report(settings, args) is None:
            return 2

        try:
            decision = asyncio.run(_in_process(settings, args.config, run))
        except (TransitionRefused, ValueError, KeyError) as exc:
            print(f"rollback refused: {exc}", file=sys.stderr)
            return 1
    print(f"{decision['kind']} {decision['version']}: rolled back - {decision['reason']}")
    return 0


def _route_store_or_report(args: argparse.Namespace) -> str | None:
    """The store URL for a read-only command on `args.route`, or None once the problem is reported
    (a bad config, an unknown route, a store that does not exist)."""
    settings = settings_or_report(args)
    if settings is None or not _known_route(settings, args.route):
        return None
    return existing_store_or_report(settings, args)


# -- flywheel prompts log / diff ----------------------------------------------------------------
def _log(args: argparse.Namespace) -> int:
    from gateway.reports import explain

    url = _route_store_or_report(args)
    if url is None:
        return 2
    entries = asyncio.run(_with_registry(url, lambda r: explain.log(r, args.route, args.kind)))
    table = Table(title=f"{args.route}: artifact history", show_lines=False)
    for col in ("when", "version", "change", "reason"):
        table.add_column(col, overflow="fold")
    colours = {"promoted": "green", "canary": "yellow", "rolled_back": "red", "rejected": "red"}
    for e in entries:
        change = Text(f"{e.from_state or 'new'} -> {e.to_state}", style=colours.get(e.to_state, ""))
        table.add_row(_when(e.at), e.version, change, e.reason)
    Console(width=args.width).print(table)
    if not entries:
        print(f"no artifacts for route {args.route} yet")
    return 0


def print_diff(d: Any, console: Console) -> None:
    """A VersionDiff: coloured unified diff, evaluation figures, evidence."""
    console.print(f"[bold]{d.route}[/] {d.kind} {d.from_version or '(none)'} -> {d.to_version}  {d.note}")
    for line in (d.diff or "(no textual change)").splitlines():
        style = ("bold" if line.startswith(("+++", "---")) else "green" if line.startswith("+")
                 else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else "")
        console.print(Text(line, style=style))
    ev = d.evaluation if isinstance(d.evaluation, dict) else {}
    offline, online = ev.get("offline"), ev.get("online")
    if offline:
        console.print(f"\n[bold]offline[/]: {offline['reason']}")
        for name, mean in offline.get("trials") or []:
            console.print(f"  trial {name}: {mean:.2f}", style="dim")
    if online:
        console.print(f"[bold]online[/]: canary {online['canary_mean']:.2f} on {online['canary_n']} calls vs "
                      f"current {online['current_mean']:.2f} on {online['current_n']}")
    if ev.get("guardrails"):
        console.print(f"[bold red]guardrails[/]: {'; '.join(ev['guardrails'])}")
    console.print(f"\n[bold]evidence[/] ({len(d.evidence)} of {d.evidence_total} calls):")
    for item in d.evidence:
        console.print(f"  {item.call_id}  {_when(item.created_at)}")
        console.print(f"    Q: {item.question}")
        console.print(f"    A: {item.answer}", style="dim")
        for fb in item.feedback:
            what = (f"correction: {fb.correction}" if fb.correction else f"rating {fb.rating}"
                    if fb.rating is not None else f"score {fb.score}" if fb.score is not None
                    else f"signal {fb.signal}")
            console.print(f"    feedback {fb.id} ({fb.source}): {what}")


def _diff(args: argparse.Namespace) -> int:
    from gateway.reports import explain

    url = _route_store_or_report(args)
    if url is None:
        return 2
    a, b = (None, args.versions[0]) if len(args.versions) == 1 else [*args.versions, None, None][:2]

    async def run(registry: ArtifactRegistry) -> explain.VersionDiff:
        nonlocal a, b
        if a is None and b is None:  # default: the current version against the one promoted before it
            a, b = await explain.promoted_pair(registry, args.route, args.kind)
            if b is None:
                raise explain.NoSuchVersion(f"route {args.route} has no promoted {args.kind} yet; "
                                            f"`flywheel prompts log {args.route}` lists its versions")
        return await explain.diff(registry, args.route, a, b, kind=args.kind)

    try:
        d = asyncio.run(_with_registry(url, run))
    except (explain.NoSuchVersion, ValueError) as exc:
        print(exc.args[0] if exc.args else exc, file=sys.stderr)
        return 1
    print_diff(d, Console(width=args.width, force_terminal=args.color or None, no_color=args.no_color))
    return 0


def register(sub: Any) -> None:
    learn = sub.add_parser("learn", help="run one learning cycle for a route now")
    learn.add_argument("route")
    learn.add_argument("--url", help="a running gateway (e.g. http://127.0.0.1:8080); default: in-process")
    learn.add_argument("--timeout", type=float, default=600.0)
    learn.add_argument("--json", action="store_true", help="print the report as JSON")
    learn.set_defaults(func=_learn)

    rollback = sub.add_parser("rollback", help="roll back a canary or promoted version at once")
    rollback.add_argument("route")
    rollback.add_argument("version", nargs="?", help="default: the running canary, else the latest promotion")
    rollback.add_argument("--reason", default="rolled back by admin (CLI)")
    rollback.add_argument("--url", help="a running gateway; default: in-process against the store")
    rollback.add_argument("--timeout", type=float, default=30.0)
    rollback.set_defaults(func=_rollback)

    prompts = sub.add_parser("prompts", help="learned prompt templates: history and diffs")
    psub = prompts.add_subparsers(dest="prompts_command", required=True)
    log = psub.add_parser("log", help="every candidate, canary, promotion and rollback with its reason")
    log.add_argument("route")
    log.add_argument("--kind", choices=("template", "index", "policy"), default=None)
    log.add_argument("--width", type=int, default=None)
    log.set_defaults(func=_log)
    diff = psub.add_parser("diff", help="unified diff between two versions, with evaluation and evidence")
    diff.add_argument("route")
    diff.add_argument("versions", nargs="*", metavar="VERSION",
                      help="[A] B; default: the current version against the one promoted before it")
    diff.add_argument("--kind", choices=("template", "index", "policy"), default="template")
    diff.add_argument("--width", type=int, default=None)
    diff.add_argument("--color", action="store_true", help="colour even when not a terminal")
    diff.add_argument("--no-color", action="store_true")
    diff.set_defaults(func=_diff)
