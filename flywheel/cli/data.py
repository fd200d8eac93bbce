"""`flywheel forget --user ID` and `flywheel export --route R --format openai-jsonl`.

Both work on the store named by config.toml's `[store] url`, directly (no gateway needed).

Export writes fine-tuning data, one JSON object per line in OpenAI's chat format:
`{"messages": [...request messages..., {"role": "assistant", "content": final answer}]}`
(plus `"tools"` when the request had some). The final answer is the newest correction of the
call when there is one, else the logged answer. Calls whose newest rating is -1 and that have
no correction are left out, and so are failed, no-log and non-chat calls; `--min-rating 1`
keeps only calls rated 1 (or corrected). Texts are as stored: scrubbed unless
`[privacy] store_raw = true`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from flywheel.cli.config_cmd import existing_store_or_report, settings_or_report
from gateway.config.settings import Settings
from gateway.privacy.pseudonym import pseudonymizer
from gateway.store import open_store
from gateway.store.base import Store
from gateway.store.forget import ForgetReport, forget_user
from gateway.store.records import JSON, CallRecord, FeedbackRecord

PAGE = 500  # calls read per query
PROGRESS_MIN = 1000  # exports at least this long show a progress bar on stderr


@dataclass(frozen=True, slots=True)
class Verdict:
    """What feedback says about one call, newest first: its rating and its correction."""

    rating: int | None = None
    correction: str | None = None


@dataclass(slots=True)
class ExportStats:
    """Counts of one export."""

    scanned: int = 0  # calls read
    written: int = 0  # examples written
    corrected: int = 0  # examples whose answer is a correction
    rejected: int = 0  # left out: rated -1 without a correction, or below --min-rating
    unusable: int = 0  # left out: failed, no-log, non-chat, or no answer text


def verdicts(feedback: Iterable[FeedbackRecord]) -> dict[str, Verdict]:
    """Per call id, the newest explicit rating and the newest correction (feedback is append-only)."""
    out: dict[str, Verdict] = {}
    for fb in sorted(feedback, key=lambda f: (f.created_at, f.id)):
        prev = out.get(fb.call_id, Verdict())
        out[fb.call_id] = Verdict(
            rating=fb.rating if fb.rating is not None else prev.rating,
            correction=fb.correction if fb.correction is not None else prev.correction,
        )
    return out


def _answer(response: JSON) -> dict[str, Any] | None:
    """The assistant message of the first choice, reduced to what fine-tuning accepts."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    if out["content"] is None and "tool_calls" not in out:
        return None
    return out


def training_example(call: CallRecord, verdict: Verdict | None, min_rating: int | None) -> dict[str, Any] | str:
    """The example for one call, or the reason it is left out ("rejected" or "unusable")."""
    v = verdict or Verdict()
    if v.correction is None and (v.rating == -1 or (min_rating is not None and (v.rating or 0) < min_rating)):
        return "rejected"
    request = call.request
    if call.endpoint != "chat" or call.status != 200 or call.no_log or not isinstance(request, dict):
        return "unusable"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "unusable"
    answer = {"role": "assistant", "content": v.correction} if v.correction is not None else _answer(call.response)
    if answer is None:
        return "unusable"
    example: dict[str, Any] = {"messages": [*messages, answer]}
    if request.get("tools"):
        example["tools"] = request["tools"]
    return example


async def export_route(store: Store, route: str, out: IO[bytes], *, min_rating: int | None = None,
                       until: float | None = None, page: int = PAGE,
                       progress: Callable[[int], None] | None = None) -> ExportStats:
    """Write the route's calls created before `until` (default: now) as openai-jsonl lines to `out`.

    `progress` is called with the number of calls read after each page.
    """
    stats = ExportStats()
    cutoff = time.time() if until is None else until  # a stable snapshot while the gateway keeps logging
    offset = 0
    while True:
        calls = await store.list_calls(route=route, until=cutoff, limit=page, offset=offset)
        if not calls:
            return stats
        offset += len(calls)
        found = verdicts(await store.list_feedback(call_ids=[c.id for c in calls]))
        for call in calls:
            stats.scanned += 1
            example = training_example(call, found.get(call.id), min_rating)
            if example == "rejected":
                stats.rejected += 1
            elif isinstance(example, str):
                stats.unusable += 1
            else:
                out.write(orjson.dumps(example) + b"\n")
                stats.written += 1
                stats.corrected += found.get(call.id, Verdict()).correction is not None
        if progress is not None:
            progress(stats.scanned)
        if len(calls) < page:
            return stats


async def _forget(settings: Settings, user: str) -> ForgetReport:
    store = open_store(settings.store.url)
    try:
        await store.migrate()
        # Rows are stored under the user's pseudonym (the same keyed hash the gateway uses); rows
        # stored before pseudonymisation (or with it off) carry the raw id: both go.
        pseudo = await asyncio.to_thread(pseudonymizer, settings.privacy)
        users = [user] if pseudo is None else [user, pseudo.user(user)]
        return await forget_user(store, users, settings.routes)
    finally:
        await store.close()


def _forget_cmd(args: argparse.Namespace) -> int:
    settings = settings_or_report(args)
    if settings is None or existing_store_or_report(settings, args) is None:
        return 2
    from rich.console import Console

    with Console(stderr=True).status(f"forgetting user {args.user!r}…"):
        report = asyncio.run(_forget(settings, args.user))
    if report.calls == 0 and report.feedback == 0 and not report.versions:
        # A mistyped id would otherwise look like a success; the tombstone is kept all the same,
        # so calls of that user still queued in a running gateway are dropped when they arrive.
        print(f"no calls or feedback of user {args.user!r} in the store (is it the request's `user` field?); "
              "a tombstone drops any that arrive later", file=sys.stderr)
        return 1
    print(f"forgot user {args.user!r}: {report.calls} calls and {report.feedback} feedback rows deleted; "
          "any made before now that reach the store later (still queued in a gateway, or spilled) are dropped")
    if report.versions:
        print(f"removed {report.examples} of their examples from {len(report.versions)} artifact versions "
              f"({', '.join(report.versions)})" + (f"; live versions replaced: {', '.join(report.superseded)}"
                                                  if report.superseded else ""))
    return 0


def _progress_bar(total: int) -> tuple[AbstractContextManager[Any], Callable[[int], None] | None]:
    """A rich progress bar on stderr for a long export; nothing for a short one."""
    if total < PROGRESS_MIN:
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=False)
    task = bar.add_task("export", total=total)
    return bar, lambda done: bar.update(task, completed=done)


async def _export(url: str, args: argparse.Namespace, out: IO[bytes]) -> ExportStats:
    store = open_store(url)
    try:
        await store.migrate()
        total = await store.count_calls(route=args.route)
        ctx, progress = _progress_bar(total)
        with ctx:
            return await export_route(store, args.route, out, min_rating=args.min_rating, progress=progress)
    finally:
        await store.close()


def _export_cmd(args: argparse.Namespace) -> int:
    settings = settings_or_report(args)
    if settings is None:
        return 2
    url = existing_store_or_report(settings, args)
    if url is None:
        return 2
    print("exporting " + ("calls rated 1 or corrected" if args.min_rating == 1 else
                          "every answered call except those rated -1 without a correction, unrated ones included "
                          "(--min-rating 1: rated 1 or corrected only)"), file=sys.stderr)
    if args.out:
        with Path(args.out).open("wb") as f:
            stats = asyncio.run(_export(url, args, f))
    else:
        stats = asyncio.run(_export(url, args, sys.stdout.buffer))
        sys.stdout.flush()
    print(f"exported {stats.written} examples from {stats.scanned} calls of route {args.route!r} "
          f"({stats.corrected} corrected answers; left out: {stats.rejected} rejected, "
          f"{stats.unusable} failed/no-log/empty)", file=sys.stderr)
    return 0


def _rating(value: str) -> int:
    rating = int(value)
    if rating not in (-1, 1):
        raise argparse.ArgumentTypeError("must be 1 or -1")
    return rating


def register(sub: Any) -> None:
    """Add `forget` and `export` to the `flywheel` parser."""
    forget = sub.add_parser("forget", help="delete a user's calls and feedback, and their examples in artifacts")
    forget.add_argument("--user", required=True, help="the end-user id (the request's `user` field)")
    forget.set_defaults(func=_forget_cmd)
    export = sub.add_parser("export", help="export a route's calls as fine-tuning data")
    export.add_argument("--route", required=True)
    export.add_argument("--format", choices=["openai-jsonl"], default="openai-jsonl")
    export.add_argument("--min-rating", type=_rating, default=None,
                        help="1: only calls rated 1 (or corrected); default: every call but those rated -1 "
                             "without a correction, unrated ones included")
    export.add_argument("--out", help="output file (default: stdout)")
    export.set_defaults(func=_export_cmd)
