"""What metrics, tracing hooks and the key ring cost per request, measured in-process (CPU time).

Run from the repository root:

    python -m bench.metrics_cost [--requests 200000]

Per request the gateway counts the finished call (`CallMetrics.observe`: latency, TTFT, tokens,
cost, status), asks whether the request is traced (`tracing.traced()`, one context-variable read)
and looks the bearer key up in the key ring (`KeyRing.lookup` + `disabled`: a hash and two dict
reads). Everything else the metrics cost (writer queue, spill size, canary shares, database write
and embedder latency) is read at scrape time or off the request path. CPU time is measured with
`time.process_time`, so other jobs on the machine inflate it less than wall time (but they still
do: caches and frequency are shared). `python -m bench.overhead --no-metrics` against a normal run
gives the end-to-end difference; this gives the figure without the load generator's noise.
Target: <= 15 us per request.
"""

from __future__ import annotations

import argparse
import os
import time

from gateway.config.settings import parse_settings
from gateway.keyring import KeyRing, hash_key
from gateway.observability import tracing
from gateway.observability.metrics import CallMetrics
from gateway.store.records import Attempt, CallRecord

TARGET_US = 15.0


def _record(i: int) -> CallRecord:
    return CallRecord(id=f"chatcmpl-{i}", route=f"route-{i % 4}", variant=f"v{i % 3}", model="m", key_id=f"k{i % 8}",
                      status=200 if i % 50 else 500, prompt_tokens=120, completion_tokens=40, cost_usd=0.0002,
                      latency_ms=42.0, ttft_ms=12.0 if i % 2 else None,
                      attempts=[Attempt("m", "up", 200, None, 40.0)])


def measure(n: int) -> tuple[float, float, float]:
    """(metrics, key ring, tracing check) CPU microseconds per request over `n` requests."""
    metrics = CallMetrics(per_key=True)
    records = [_record(i) for i in range(64)]
    for r in records:  # labelled children are created once per label set, not per request
        metrics.observe(r)
    keys = {f"k{i}": {"hash": "sha256:" + hash_key(f"sk-{i}")} for i in range(8)}
    settings = parse_settings({"auth": {"keys": keys}})
    ring = KeyRing(lambda: settings, lambda: None)
    tokens = [f"sk-{i}" for i in range(8)]

    t0 = time.process_time()
    for i in range(n):
        metrics.observe(records[i & 63])
    t1 = time.process_time()
    for i in range(n):
        name = ring.lookup(hash_key(tokens[i & 7]))
        assert name is not None and not ring.disabled(name)
    t2 = time.process_time()
    for _ in range(n):
        tracing.traced()
    t3 = time.process_time()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6, (t3 - t2) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200_000)
    args = p.parse_args(argv)
    print(f"metrics cost per request, in-process CPU time ({os.cpu_count()} cores; load average at start "
          f"{os.getloadavg()[0]:.2f}); {args.requests} requests, best of 3")
    runs = [measure(args.requests) for _ in range(3)]
    obs, ring, traced = (min(r[i] for r in runs) for i in range(3))
    total = obs + ring + traced
    print(f"  CallMetrics.observe   {obs:6.2f} us")
    print(f"  KeyRing lookup        {ring:6.2f} us  (sha256 of the key + two dict reads)")
    print(f"  tracing.traced()      {traced:6.2f} us  (tracing off)")
    verdict = "PASS" if total <= TARGET_US else "MISS"
    print(f"  total                 {total:6.2f} us  target <= {TARGET_US:.0f} us: {verdict}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
