"""How long one huge chat request stalls everyone else (issue 18, item 3).

    python -m bench.big_request [--messages 60000] [--probes 4] [--rounds 3]

Starts the fake upstream and a gateway (SQLite, scrubbing on, as shipped), keeps `--probes`
clients sending small chat requests back to back, and in each round posts one request of
`--messages` messages (~100 bytes each: 60,000 is ~7.8 MB, under the 8 MB body limit) to another
upstream process (route bench-1; the probes use bench-0). Prints the
small requests' p50 before, and their worst latency while the big request is parsed, answered,
logged, scrubbed and stored: the max stall of other requests (target <= 50 ms), plus how the writer
handled the big call (`offloaded`: prepared on a worker thread) and its stored size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from bench.loadgen import Service
from bench.overhead import start_gateway, start_upstream, write_config


async def _probe(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[tuple[float, float]]) -> None:
    body = orjson.dumps({"model": "bench-0", "messages": [{"role": "user", "content": "ping"}]})
    while not stop.is_set():
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            await r.read()
        out.append((t0, time.perf_counter() - t0))


def big_body(n_messages: int) -> bytes:
    """The huge request: `n_messages` messages of ~100 bytes (60,000: ~7.8 MB)."""
    return orjson.dumps({"model": "bench-1", "user": "bench", "messages": [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}: " + "lorem ipsum " * 7}
        for i in range(n_messages)]})


def _post(port: int, body: bytes) -> None:
    """POST the huge request from a worker thread: blocking sends release the interpreter lock,
    so sending 7.8 MB does not delay this process's probes (which would count as a stall)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        text = r.read()
        assert r.status == 200, text[:500]
    finally:
        conn.close()


async def _round(gw: Service, big: bytes, probes: int) -> tuple[float, float, float]:
    url = gw.url + "/v1/chat/completions"
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        tasks = [asyncio.create_task(_probe(s, url, stop, samples)) for _ in range(probes)]
        await asyncio.sleep(1.5)  # baseline
        start = time.perf_counter()
        await asyncio.to_thread(_post, gw.port, big)
        big_s = time.perf_counter() - start
        await asyncio.sleep(2.5)  # the writer's batch window (1 s) and the scrubbing that follows
        stop.set()
        await asyncio.gather(*tasks)
    base = [d for t, d in samples if t < start]
    during = [d for t, d in samples if t >= start - 0.01]
    return statistics.median(base) * 1000, max(during) * 1000, big_s * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=60_000)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # Two upstream processes: the fake upstream is one Python process, and parsing a 6 MB body
        # stalls it; the probes' upstream must not be the one the big request goes to.
        upstream, other = start_upstream(0, tmp), start_upstream(1, tmp)
        gw: Service | None = None
        try:  # a gateway that fails to start must not leave the upstreams running
            gw, _ = start_gateway(write_config(tmp, {0: upstream, 1: other}), tmp, "big")
            print(f"{'round':>5} {'probe p50 ms':>13} {'max probe ms':>13} {'stall ms':>9} {'big request ms':>15}")
            stalls = []
            body = big_body(args.messages)
            # the 60,000 dicts built above are garbage now: collect them, and keep this process's own
            # collector passes (which would delay the probes, and count as the gateway's stall) short
            gc.collect()
            gc.freeze()
            for i in range(args.rounds):
                p50, worst, big = asyncio.run(_round(gw, body, args.probes))
                stalls.append(worst - p50)
                print(f"{i + 1:>5} {p50:>13.1f} {worst:>13.1f} {worst - p50:>9.1f} {big:>15.0f}")
            ready = orjson.loads(__import__("httpx").get(gw.url + "/readyz").content)
            stats = ready["writer"]
            con = sqlite3.connect(tmp / "flywheel.db")
            size, notes = con.execute("SELECT MAX(LENGTH(request)), MAX(notes) FROM calls").fetchone()
            con.close()
            print(f"max stall of other requests: {max(stalls):.1f} ms (target <= 50 ms); writer offloaded "
                  f"{stats['offloaded']} calls to a thread; largest stored request {size} bytes ({notes})")
        finally:
            if gw is not None:
                gw.stop()
            upstream.stop()
            other.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
