"""Learned-prompt latency like for like: the same upstream prompts, once with learning running and
once with learning idle.

A learned prompt grows during a pass (more examples, a longer template), so learned-prompt calls
sent while a cycle ran are longer than the few sent while none did: their medians compare prompt
lengths, not learning's cost to live traffic. Here, after the pass, a sample of the learned-prompt
calls sent during learning is re-sent through the task's bare route (no template, no retrieval, no
learning) with the messages the gateway stored for them, i.e. the prompt the upstream got, once
the gateway's `flywheel_learner_cycles_running` gauge has stayed at 0. A re-send that overlapped
a cycle after all is dropped.

llama.cpp keeps the last prompt's tokens and reads only what differs, and a learned prompt opens
with the template, a third of it or more: a prompt is read faster after one with the same template.
Re-sent back to back (as here), most prompts follow one with their template; their live originals
did only when the live call before them carried the same template (canary arms alternate) and no
replay ran in between, or a replay of the same template did. So the baseline carries the cache's
luck either way. Run on a kept data dir, this module re-sends the same picks on a fresh llama.cpp
server (no gateway; the stored prompts go straight to it) twice: each after the prompt of the live
call that preceded it in the pass (the cache its original met from live traffic alone), and back
to back; the spread between the two is the noise in the figure:

    python -m bench.generalize.resend /tmp/flywheel-generalize-XXXX [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.generalize.effects import learned
from bench.generalize.gateway_pass import CallRow, Client, PassRun
from gateway.store.codec import blob_refs, loads, restore


def stored_messages(db: Path, call_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The messages the gateway sent upstream for each call, long texts read back from `blobs`
    (the store's own codec: gateway/store/codec.py)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[str, list[dict[str, Any]]] = {}
        for cid in call_ids:
            row = con.execute("SELECT request FROM calls WHERE id = ?", (cid,)).fetchone()
            request = loads(row[0]) if row else None
            if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
                continue
            refs = sorted(blob_refs(request))
            texts = dict(con.execute(f"SELECT hash, text FROM blobs WHERE hash IN ({','.join('?' * len(refs))})",
                                     refs).fetchall()) if refs else {}
            restore(request, texts)
            out[cid] = request["messages"]
        return out
    finally:
        con.close()


def wait_idle(client: Client, *, quiet_s: float = 3.0, timeout_s: float = 900.0) -> bool:
    """True once no learning cycle has run for `quiet_s` seconds; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    idle_since: float | None = None
    while time.monotonic() < deadline:
        if client.cycles_running() == 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= quiet_s:
                return True
        else:
            idle_since = None
        time.sleep(0.5)
    return False


def picks_of(rows: Sequence[CallRow], n: int) -> list[int]:
    """Up to `n` learned-prompt calls sent during learning, evenly spaced over the pass (row indices)."""
    picks = [i for i, r in enumerate(rows) if r.during_learning and learned(r)]
    return picks[:: max(1, len(picks) // n)][:n]


def resend_learned(client: Client, db: Path, run: PassRun, bare_route: str, max_tokens: int, *, n: int = 40) -> int:
    """Re-send up to `n` learned-prompt calls sent during learning (evenly spaced over the pass)
    with learning idle; fills `run.resent` and returns how many pairs it holds."""
    picks = picks_of(run.rows, n)
    messages = stored_messages(db, [run.rows[i].call_id for i in picks])
    if not picks or not wait_idle(client):
        print(f"    learned-prompt re-send: {'no learned calls' if not picks else 'learning never went idle'}",
              flush=True)
        return 0
    for i in picks:
        msgs = messages.get(run.rows[i].call_id)
        if msgs is None:
            continue
        latency = client.send(bare_route, msgs, max_tokens)
        if client.cycles_running() == 0:
            run.resent[i] = latency
    print(f"    learned-prompt re-send: {len(run.resent)} of {len(picks)} calls re-sent with learning idle", flush=True)
    return len(run.resent)


def _send_direct(http: httpx.Client, alias: str, messages: list[dict[str, Any]], max_tokens: int) -> float:
    sent = time.time()
    http.post("/chat/completions", json={"model": alias, "messages": messages, "max_tokens": max_tokens,
                                         "temperature": 0.0}).raise_for_status()
    return time.time() - sent


def main(argv: Sequence[str] | None = None) -> int:
    """Re-send a kept data dir's picks on a fresh llama.cpp server, after their live predecessors
    and back to back, and print per task the live p50 against each."""
    from bench.generalize.tasks import TASKS
    from bench.real.serve import serve_model

    ap = argparse.ArgumentParser(description="learned-prompt calls re-sent like for like (bench/generalize/resend.py)")
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("-n", type=int, default=40)
    args = ap.parse_args(argv)
    runs: dict[str, list[CallRow]] = {}
    names = {f.name for f in dataclasses.fields(CallRow)}
    for line in (args.data_dir / "calls.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["arm"] == "on":
            runs.setdefault(row["task"], []).append(CallRow(**{k: v for k, v in row.items() if k in names}))
    server = serve_model(args.model, n_threads=args.threads)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            for task, rows in runs.items():
                max_tokens = TASKS[task](0).max_tokens
                picks = [i for i in picks_of(rows, args.n) if i > 0]
                wanted = [rows[j].call_id for i in picks for j in (i - 1, i)]
                msgs = stored_messages(args.data_dir / "flywheel.db", wanted)
                picks = [i for i in picks if rows[i].call_id in msgs and rows[i - 1].call_id in msgs]
                primed = []
                for i in picks:
                    _send_direct(http, server.alias, msgs[rows[i - 1].call_id], max_tokens)
                    primed.append(_send_direct(http, server.alias, msgs[rows[i].call_id], max_tokens))
                live = statistics.median(rows[i].latency_s for i in picks)
                after = statistics.median(primed)
                plain = statistics.median(_send_direct(http, server.alias, msgs[rows[i].call_id], max_tokens)
                                          for i in picks)
                print(f"{task}: {len(picks)} learned-prompt calls, live p50 {live:.2f} s during learning vs "
                      f"{after:.2f} s re-sent after their live predecessors ({live / after - 1:+.0%}), "
                      f"{plain:.2f} s back to back ({live / plain - 1:+.0%})", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
