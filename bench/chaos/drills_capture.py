"""Drills for the capture side of issue #18: NUL bytes (1), feedback during an outage (2), one huge
request (3), start with the database down (5), disk full (7), privacy (13). Black-box: a real
gateway process, real PostgreSQL (a throwaway cluster), rows read back through the store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import shutil
import subprocess
import sys
import time

import orjson

from bench.chaos.context import DrillContext, settle, steady
from bench.chaos.harness import REPO, Client, DrillResult, StallProbe, session


async def nul_bytes(ctx: DrillContext) -> DrillResult:
    """#1: calls with NUL in a message and in `user` between normal ones; every row must land."""
    res = ctx.result("nul-byte")
    gw = ctx.start(ctx.write_config())
    async with session() as s:
        client = Client(s, gw.url)
        for i in range(200):
            bad = i % 20 == 0
            _status, call_id = await client.chat("r", "hello\u0000world" if bad else f"hi {i}",
                                                user="u\u0000ser" if bad else f"user-{i % 7}")
            if call_id and i % 4 == 0:
                await client.feedback(call_id, comment="nul\u0000comment" if bad else "fine")
        res.check(client.statuses.get(200, 0) == 200, f"answers {client.statuses}")
        await asyncio.sleep(1.5)
        after = await client.ready()
        res.note(f"writer after: {after.get('writer')}")
    return await ctx.finish(res, gw, client)


async def outage_feedback(ctx: DrillContext) -> DrillResult:
    """#2: PostgreSQL stops for 10 s while calls and feedback flow; feedback is accepted, all lands,
    and the log gets a line per state change, not per request."""
    res = ctx.result("db-outage")
    if ctx.backend != "postgres":
        res.note("skipped: SQLite has no server to stop")
        return res
    gw = ctx.start(ctx.write_config())
    async with session() as s:
        client = Client(s, gw.url)
        await steady(client, "r", 100, 50, feedback_every=2)
        lines_before = len(gw.log_lines())
        ctx.cluster.stop()
        refused_before = sum(v for k, v in client.statuses.items() if k >= 500)
        await steady(client, "r", 500, 50, feedback_every=2)  # 10 s of outage
        ctx.cluster.start()
        await steady(client, "r", 100, 50, feedback_every=2)
        res.note(f"/readyz after the outage: {await settle(client)}")
        refused = sum(v for k, v in client.statuses.items() if k >= 500) - refused_before
        log_lines = len(gw.log_lines()) - lines_before
        res.note(f"5xx during the outage: {refused}; log records during it: {log_lines}")
        res.check(refused == 0, f"{refused} requests refused during the outage")
        res.check(log_lines < 50, f"{log_lines} log records during the outage (one per state change expected)")
    return await ctx.finish(res, gw, client, wait_s=60)


async def huge_request(ctx: DrillContext) -> DrillResult:
    """#3: a 60,000-message request (~3 MB) while other requests are probed: stall <= 50 ms."""
    res = ctx.result("huge-request")
    gw = ctx.start(ctx.write_config())
    data = orjson.dumps({"model": "r", "messages": [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} with some words"}
        for i in range(60_000)]})
    gc.collect()  # this process's own collector passes over 60,000 dicts would delay the probe too
    async with session() as s:
        client = Client(s, gw.url)
        await steady(client, "r", 50, 100)  # warm
        probe = StallProbe(s, gw.url)
        probe.start()
        await asyncio.sleep(0.5)
        for _ in range(3):
            status, _ = await client.post_chat_from_thread(data, timeout=120)
            res.check(status == 200, f"huge request answered {status}")
            await asyncio.sleep(2.0)  # the writer's batch window: the stored copy is prepared meanwhile
        res.stall_ms = await probe.stop()
        res.note(f"{len(data) / 1e6:.1f} MB request x3, max stall {res.stall_ms:.0f} ms")
        res.check(res.stall_ms <= 50, f"stall {res.stall_ms:.0f} ms > 50 ms")
    return await ctx.finish(res, gw, client)


async def start_db_down(ctx: DrillContext) -> DrillResult:
    """#5: the gateway starts while PostgreSQL is down, serves, and writes once it is back."""
    res = ctx.result("start-db-down")
    if ctx.backend != "postgres":
        res.note("skipped: SQLite has no server to stop")
        return res
    ctx.cluster.stop()
    try:
        gw = ctx.start(ctx.write_config(), ready=False)
        started = time.monotonic()
        try:
            gw.wait_ready(60)
        except RuntimeError as exc:
            res.check(False, f"did not start with the database down: {str(exc)[-300:]}")
            return res
        res.note(f"serving {time.monotonic() - started:.1f} s after start, database down")
        async with session() as s:
            client = Client(s, gw.url)
            await steady(client, "r", 200, 50, feedback_every=4)
            ready = await client.ready()
            res.note(f"/readyz while down: {ready.get('status')}")
            res.check(client.statuses.get(200, 0) == 200, f"answers {client.statuses}")
            ctx.cluster.start()
            await steady(client, "r", 50, 50, feedback_every=4)
            res.note(f"/readyz once the database is back: {await settle(client)}")
    finally:
        if ctx.cluster is not None:
            with contextlib.suppress(RuntimeError):  # already running
                ctx.cluster.start()
    return await ctx.finish(res, gw, client, wait_s=60)


async def disk_full(ctx: DrillContext) -> DrillResult:
    """#7: the data directory (SQLite file and spill) or the spill directory (PostgreSQL down) is a
    full tmpfs: rows are held in memory, /readyz says so, and they land once space returns."""
    res = ctx.result("disk-full")
    if os.geteuid() != 0:
        res.note("skipped: mounting a small tmpfs needs root")
        return res
    data = ctx.root / "tmpfs"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode != 0:
        res.note(f"skipped: mount failed ({mounted.stderr.decode().strip()})")
        return res
    try:
        gw = ctx.start(ctx.write_config(data_dir=data))
        filler = data / "filler"
        async with session() as s:
            client = Client(s, gw.url)
            await steady(client, "r", 50, 100)
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
            if ctx.backend == "postgres":
                ctx.cluster.stop()
            await steady(client, "r", 2000, 200, feedback_every=40)
            await asyncio.sleep(2)
            ready = await client.ready()
            res.note(f"/readyz while full: {ready.get('status')} {ready.get('degraded')}")
            res.check(ready.get("status") != "ready", "/readyz said ready with the disk full")
            filler.unlink()
            if ctx.backend == "postgres":
                ctx.cluster.start()
            res.note(f"/readyz once space is back: {await settle(client)}")
        result = await ctx.finish(res, gw, client, wait_s=60)  # counted before the tmpfs goes
    finally:
        if ctx.backend == "postgres":
            with contextlib.suppress(RuntimeError):
                ctx.cluster.start()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
    return result


async def privacy(ctx: DrillContext) -> DrillResult:
    """#13: an email `user` and a US SSN are not stored raw; forget removes the user's rows."""
    res = ctx.result("privacy")
    gw = ctx.start(ctx.write_config())
    email, ssn = "alice.chaos@example.com", "123-45-6789"
    async with session() as s:
        client = Client(s, gw.url)
        ids = []
        for i in range(5):
            _, call_id = await client.chat("r", f"my ssn is {ssn}, question {i}", user=email)
            if call_id:
                ids.append(call_id)
                await client.feedback(call_id, correction=f"answer {i} for {email}")
    result = await ctx.finish(res, gw, client)
    from gateway.store import open_store

    store = open_store(ctx.store_url())
    try:
        calls = [await store.get_call(cid) for cid in ids]
        stored = orjson.dumps([dataclasses.asdict(c) for c in calls if c is not None], default=str).decode()
        res.check(email not in stored, "the chat `user` email is stored raw")
        res.check(ssn not in stored, "the SSN is stored raw")
    finally:
        await store.close()
    forget = subprocess.run([sys.executable, "-m", "flywheel.cli", "--config", str(ctx.root / "config.toml"),
                             "forget", "--user", email], capture_output=True, cwd=REPO, timeout=120)
    res.note(f"forget: exit {forget.returncode}: {forget.stdout.decode().strip()[-200:]}")
    store = open_store(ctx.store_url())
    try:
        left = 0
        for cid in ids:
            left += await store.get_call(cid) is not None
        res.check(left == 0, f"{left} of the user's calls left after forget")
    finally:
        await store.close()
    return result


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
