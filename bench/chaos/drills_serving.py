"""Drills for the serving side of issue #18: hostile connections (4), a failed start (6), upstream
size caps (8), malformed upstream answers (9), stream deadlines (10), graceful stop and hard kill
(11), memory under a soak and under saturation (12)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time

import aiohttp
import orjson

from bench.chaos.context import DrillContext, steady
from bench.chaos.harness import REPO, Client, DrillResult, GatewayProc, session
from bench.loadgen import run_load, spawn


def _open(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setblocking(False)
    return s


def _closed(s: socket.socket) -> bool:
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    if not data:
        return True
    with contextlib.suppress(BlockingIOError, OSError):
        while s.recv(65536):
            pass
    return _closed_after_data(s)


def _closed_after_data(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def headers(ctx: DrillContext) -> DrillResult:
    """#4: a 1 MB header, 20 unfinished 16 MB headers, 200 slowloris and 1,000 idle connections."""
    res = ctx.result("headers")
    gw = ctx.start(ctx.write_config(server={"header_timeout_s": 3, "keep_alive_s": 3}))
    rss0 = gw.rss_mib()
    async with session() as s:
        client = Client(s, gw.url)
        async with s.get(gw.url + "/v1/models", headers={"x-big": "a" * 1_000_000}) as r:
            res.check(r.status == 431, f"1 MB header answered {r.status}")
        big = [_open(gw.port) for _ in range(20)]
        for sock in big:
            with contextlib.suppress(BlockingIOError, OSError):
                sock.send(b"GET / HTTP/1.1\r\nx-big: " + b"a" * 1_000_000)  # as much as the socket takes
        slow = [_open(gw.port) for _ in range(200)]
        for sock in slow:
            sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        idle = [_open(gw.port) for _ in range(1000)]
        await asyncio.sleep(0.5)
        status, _ = await client.chat("r")
        res.check(status == 200, f"a normal request beside them answered {status}")
        peak = gw.rss_mib()
        for _ in range(6):  # the slowloris ones drip a byte a second
            await asyncio.sleep(1)
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"x")
        await asyncio.sleep(1)
        still = {name: sum(not _closed(x) for x in group) for name, group in
                 (("oversized", big), ("slowloris", slow), ("idle", idle))}
        for group in (big, slow, idle):
            for sock in group:
                sock.close()
        res.note(f"RSS {rss0:.0f} -> {peak:.0f} MiB with them open; still open after 7 s: {still}")
        res.check(sum(still.values()) == 0, f"connections never closed: {still}")
        res.check(peak - rss0 < 50, f"RSS grew {peak - rss0:.0f} MiB")
    return await ctx.finish(res, gw, client)


async def failed_start(ctx: DrillContext) -> DrillResult:
    """#6: a start that fails (the port is taken; a read-only data directory) exits non-zero, or serves
    degraded; never stays alive without a listening port."""
    res = ctx.result("failed-start")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    proc = spawn(["-m", "flywheel.cli", "--config", str(ctx.write_config()), "serve", "--port", str(taken)],
                 port=taken, log_path=ctx.root / "taken.log", cwd=REPO).proc
    try:
        code = proc.wait(45)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    holder.close()
    res.note(f"port taken: exit status {code}")
    res.check(code not in (0, None), f"with its port taken the gateway {'hung' if code is None else 'exited 0'}")
    if os.geteuid() == 0:
        ro = ctx.root / "ro"
        ro.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
        if mounted.returncode == 0:
            try:
                gw2 = GatewayProc(ctx.write_config("ro.toml", data_dir=ro), ctx.root / "ro.log")
                deadline = time.monotonic() + 45
                outcome = "hung"
                while time.monotonic() < deadline:
                    if gw2.svc.proc.poll() is not None:
                        outcome = f"exited {gw2.svc.proc.returncode}"
                        break
                    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", gw2.port), 0.5):
                        outcome = "serving"
                        break
                    await asyncio.sleep(0.2)
                gw2.terminate(20)
                res.note(f"read-only data directory: {outcome}")
                res.check(outcome == "serving" or (outcome.startswith("exited") and outcome != "exited 0"),
                          f"read-only data directory: {outcome}")
            finally:
                subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    return res


async def caps(ctx: DrillContext) -> DrillResult:
    """#8: a 200 MB upstream answer is cut at the cap (502, RSS bounded); 30 prompts of ~7 MB do not
    make ~700 MB of stored rows."""
    res = ctx.result("size-caps")
    gw = ctx.start(ctx.write_config(server={"max_upstream_response_bytes": 8_000_000}))
    async with session() as s:
        client = Client(s, gw.url)
        await ctx.script("fake-m", {"size": 200_000_000})
        status, _ = await client.chat("r", timeout=120)
        res.check(status == 502, f"200 MB upstream answer: {status}")
        await ctx.script("fake-m", {"size": 200_000_000})
        status, _ = await client.chat("r", stream=True, timeout=120)
        res.note(f"streamed 200 MB answer: HTTP {status} (ends with an error event)")
        prompt = "word " * 1_400_000  # ~7 MB
        for _ in range(30):
            await client.chat("r", prompt, timeout=120)
        res.note(f"30 x 7 MB prompts: {client.statuses}")
    result = await ctx.finish(res, gw, client, wait_s=90)
    if ctx.backend == "sqlite":
        size = sum(p.stat().st_size for p in ctx.root.glob("flywheel.db*")) / 2**20
        res.note(f"database size after: {size:.0f} MiB")
        res.check(size < 100, f"database holds {size:.0f} MiB after 30 x 7 MB prompts")
    res.check(res.peak_rss_mib < 400, f"peak RSS {res.peak_rss_mib:.0f} MiB")
    return result


async def bad_shape(ctx: DrillContext) -> DrillResult:
    """#9: a JSON array, a 200 with an error body, a non-chat JSON: 502s, each call logged."""
    res = ctx.result("bad-shape")
    gw = ctx.start(ctx.write_config(retries={"attempts": 1}))
    async with session() as s:
        client = Client(s, gw.url)
        for answer in ([{"a": 1}], {"error": {"message": "overloaded"}}, {"object": "list", "data": []}) * 10:
            await ctx.script("fake-m", {"json": answer})
            status, call_id = await client.chat("r")
            res.check(status == 502 and call_id is not None, f"{orjson.dumps(answer)[:40]!r} answered {status}")
    return await ctx.finish(res, gw, client)


async def stream_deadline(ctx: DrillContext) -> DrillResult:
    """#10: streams that drip a chunk a second, or only keep-alive comments, end at deadline_s."""
    res = ctx.result("stream-deadline")
    gw = ctx.start(ctx.write_config(retries={"deadline_s": 4, "attempt_timeout_s": 2}))
    async with session() as s:
        client = Client(s, gw.url)
        for step in ({"drip_s": 1.0, "reply": "w " * 30}, {"ping_after": 1, "ping_s": 0.5}):
            await ctx.script("fake-m", step)
            started = time.monotonic()
            status, _ = await client.chat("r", stream=True)
            took = time.monotonic() - started
            res.note(f"{next(iter(step))}: HTTP {status}, ended after {took:.1f} s (deadline_s 4)")
            res.check(took < 6, f"{next(iter(step))} stream held {took:.1f} s")
    return await ctx.finish(res, gw, client)


async def graceful_stop(ctx: DrillContext) -> DrillResult:
    """#11: SIGTERM under load on keep-alive connections: no request gets a TCP error."""
    res = ctx.result("graceful-stop")
    gw = ctx.start(ctx.write_config())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        client = Client(s, gw.url)
        load = asyncio.create_task(steady(client, "r", 3000, 300, feedback_every=5, concurrency=32))
        await asyncio.sleep(3)
        res.peak_rss_mib = gw.peak_rss_mib()
        if ctx.backend == "postgres":
            ctx.cluster.stop()  # the database down as well: the stop spills what it cannot write
        gw.svc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(load, 60)
        answered = sum(client.statuses.values())
        res.note(f"answered {answered} ({client.statuses}); cut off after being sent: {client.resets}; "
                 f"refused once the port closed: {client.transport_errors - client.resets}")
    with contextlib.suppress(subprocess.TimeoutExpired):
        gw.svc.proc.wait(60)
    res.check(client.statuses.get(200, 0) > 0, "nothing answered")
    res.check(client.resets == 0, f"{client.resets} requests already sent got a TCP error instead of an answer")
    if ctx.backend == "postgres":
        ctx.cluster.start()
        again = ctx.start(gw.config, "gw-again")  # a restart re-ingests what the stop spilled
        await asyncio.sleep(3)
        again.terminate()
    return await ctx.finish(res, gw, client, stop=False)


async def hard_kill(ctx: DrillContext) -> DrillResult:
    """SIGKILL under load: what is lost is bounded by the batch window (flush_ms)."""
    res = ctx.result("hard-kill")
    gw = ctx.start(ctx.write_config(store={"flush_ms": 1000}))
    async with session() as s:
        client = Client(s, gw.url)
        load = asyncio.create_task(steady(client, "r", 1000, 200, feedback_every=5))
        await asyncio.sleep(3)
        res.peak_rss_mib = gw.peak_rss_mib()
        gw.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(load, 30)
    res.allowed_loss = 200 + 40  # one second of calls and feedback at this rate
    return await ctx.finish(res, gw, client, stop=False)


async def soak(ctx: DrillContext) -> DrillResult:
    """#12: ~50 req/s for --soak-minutes after a warm-up: RSS flat within ±10 %; then a saturation
    run (5,000 requests at concurrency 64): peak RSS <= 150 MiB with learners off."""
    res = ctx.result("memory")
    gw = ctx.start(ctx.write_config())
    async with session() as s:
        client = Client(s, gw.url)
        await steady(client, "r", 1500, 100, feedback_every=10, users=True)  # warm-up
        samples = [gw.rss_mib()]
        minutes = ctx.soak_minutes
        per_sample = 15
        for _ in range(max(1, int(minutes * 60 / per_sample))):
            await steady(client, "r", 50 * per_sample, 50, feedback_every=10, users=True)
            samples.append(gw.rss_mib())
        growth = (samples[-1] - samples[0]) / samples[0] * 100
        res.note(f"soak {minutes:g} min: RSS {samples[0]:.0f} -> {samples[-1]:.0f} MiB ({growth:+.1f} %), "
                 f"samples {[round(x) for x in samples]}")
        res.check(abs(growth) <= 10, f"RSS moved {growth:+.1f} % over the soak")
        body = [orjson.dumps({"model": "r", "user": f"u{i}",
                              "messages": [{"role": "user", "content": f"question {i}"}]}) for i in range(100)]
        sat = await run_load(gw.url + "/v1/chat/completions", body, requests=5000, concurrency=64, session=s)
        peak = gw.peak_rss_mib()
        res.note(f"saturation: {sat.rps:.0f} req/s, {sat.statuses}, peak RSS {peak:.0f} MiB")
        res.check(peak <= 150, f"peak RSS {peak:.0f} MiB > 150")
    return await ctx.finish(res, gw, client, wait_s=60)
