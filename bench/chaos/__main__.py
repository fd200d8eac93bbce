"""`python -m bench.chaos [--drills a,b] [--backends sqlite,postgres] [--soak-minutes N]`

One drill per failure of issue #18 against a real gateway process on loopback with the fake
upstream, on SQLite and on a throwaway PostgreSQL cluster this command starts and removes itself
(initdb + pg_ctl on a free port; never the machine's own cluster). Each drill prints what it sent,
what the store holds, what was lost or duplicated, the worst stall of other requests and the
gateway's peak RSS; a summary table ends the run. Drills that need root (tmpfs) skip otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.chaos import drills_capture as cap
from bench.chaos import drills_serving as srv
from bench.chaos.context import DrillContext
from bench.chaos.harness import REPO, DrillResult
from bench.loadgen import free_port, spawn, wait_http

Drill = Callable[[DrillContext], Awaitable[DrillResult]]

DRILLS: dict[str, tuple[str, Drill]] = {  # name -> (issue #18 item, drill)
    "nul-byte": ("1", cap.nul_bytes),
    "db-outage": ("2", cap.outage_feedback),
    "huge-request": ("3", cap.huge_request),
    "headers": ("4", srv.headers),
    "start-db-down": ("5", cap.start_db_down),
    "failed-start": ("6", srv.failed_start),
    "disk-full": ("7", cap.disk_full),
    "size-caps": ("8", srv.caps),
    "bad-shape": ("9", srv.bad_shape),
    "stream-deadline": ("10", srv.stream_deadline),
    "graceful-stop": ("11", srv.graceful_stop),
    "hard-kill": ("11", srv.hard_kill),
    "memory": ("12", srv.soak),
    "privacy": ("13", cap.privacy),
}
ONE_BACKEND = {"headers", "failed-start", "bad-shape", "stream-deadline", "memory"}  # not about the store


def _table(results: list[DrillResult]) -> str:
    head = ("drill", "item", "backend", "sent", "rows", "fb sent", "fb found", "lost", "dups", "stall ms",
            "peak MiB", "result")
    rows = [head]
    for r in results:
        verdict = "skip" if r.passed is None else "PASS" if r.passed else "FAIL"
        rows.append((r.drill, DRILLS[r.drill][0] if r.drill in DRILLS else "", r.backend, str(r.sent), str(r.rows),
                     str(r.fb_sent), str(r.fb_found), str(r.lost), str(r.duplicates), f"{r.stall_ms:.0f}",
                     f"{r.peak_rss_mib:.0f}", verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


async def _run_one(name: str, ctx: DrillContext) -> DrillResult:
    print(f"== {name} ({ctx.backend})", flush=True)
    started = time.monotonic()
    try:
        # the soak runs --soak-minutes on top of its warm-up and saturation run: a fixed 15-minute cap
        # stopped every 15-minute soak before it could report
        cap = 15 * 60 + (ctx.soak_minutes * 60 if name == "memory" else 0)
        res = await asyncio.wait_for(DRILLS[name][1](ctx), timeout=cap)
    except Exception as exc:  # a drill that crashes is a failed drill, and the run goes on
        res = ctx.result(name)
        res.passed = False
        res.note(f"drill crashed: {exc.__class__.__name__}: {exc}")
        for gw in ctx.started:  # a crashed drill never reached its own stop: no gateway left running
            gw.kill()
        traceback.print_exc()
    print(f"   {name} ({ctx.backend}): sent {res.sent}, rows {res.rows}, feedback {res.fb_sent}/{res.fb_found}, "
          f"lost {res.lost}, duplicates {res.duplicates}, max stall {res.stall_ms:.0f} ms, "
          f"peak RSS {res.peak_rss_mib:.0f} MiB, {time.monotonic() - started:.0f} s", flush=True)
    return res


def _cluster() -> object | None:
    try:
        from tests.pg_throwaway import make_cluster  # the one throwaway-cluster helper (initdb + pg_ctl)

        return make_cluster()
    except BaseException as exc:  # pytest.skip raises a BaseException when the binaries are missing
        print(f"PostgreSQL backend skipped: {exc}", flush=True)
        return None


async def main_async(args: argparse.Namespace) -> int:
    names = list(DRILLS) if not args.drills else [n.strip() for n in args.drills.split(",")]
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        print(f"unknown drills {unknown}; known: {', '.join(DRILLS)}", file=sys.stderr)
        return 2
    backends = [b.strip() for b in args.backends.split(",")]
    root = Path(tempfile.mkdtemp(prefix="fw-chaos-"))
    up_port = free_port()
    upstream = spawn(["-m", "gateway.providers.fakes.server", "--port", str(up_port), "--delay-ms", "5"],
                     port=up_port, log_path=root / "upstream.log", cwd=REPO)
    results: list[DrillResult] = []
    cluster = None
    try:
        wait_http(upstream, "/v1/models")
        for backend in backends:
            if backend == "postgres":
                cluster = _cluster()
                if cluster is None:
                    continue
            for name in names:
                if backend != backends[0] and name in ONE_BACKEND:
                    continue
                work = root / f"{backend}-{name}"
                work.mkdir()
                ctx = DrillContext(backend, work, up_port, cluster, args.soak_minutes)
                results.append(await _run_one(name, ctx))
            if cluster is not None:
                cluster.destroy()  # type: ignore[attr-defined]
                cluster = None
    finally:
        if cluster is not None:
            cluster.destroy()  # type: ignore[attr-defined]
        upstream.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"scratch directory kept: {root}")
    print("\n" + _table(results))
    failed = [f"{r.drill}/{r.backend}" for r in results if r.passed is False]
    print(f"\n{len(results)} drills, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    for r in results:
        for n in r.notes:
            if n.startswith(("skipped", "FAILED")):
                print(f"  {r.drill}/{r.backend}: {n}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drills", help=f"comma-separated subset of: {', '.join(DRILLS)}")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--soak-minutes", type=float, default=1.0, help="steady-load soak (15 for the acceptance run)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, databases)")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
