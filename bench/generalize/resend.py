"""Learned-prompt latency like for like: the same upstream prompts, once with learning running and
once with learning idle.

A learned prompt grows during a pass (more examples, a longer template), so learned-prompt calls
sent while a cycle ran are longer than the few sent while none did: their medians compare prompt
lengths, not learning's cost to live traffic. Here, after the pass, a sample of the learned-prompt
calls sent during learning is re-sent through the task's bare route (no template, no retrieval, no
learning) with the messages the gateway stored for them, i.e. the prompt the upstream got, once
the gateway's `flywheel_learner_cycles_running` gauge has stayed at 0. A re-send that overlapped
a cycle after all is dropped.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.generalize.effects import learned
from bench.generalize.gateway_pass import Client, PassRun
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


def resend_learned(client: Client, db: Path, run: PassRun, bare_route: str, max_tokens: int, *, n: int = 40) -> int:
    """Re-send up to `n` learned-prompt calls sent during learning (evenly spaced over the pass)
    with learning idle; fills `run.resent` and returns how many pairs it holds."""
    picks = [i for i, r in enumerate(run.rows) if r.during_learning and learned(r)]
    picks = picks[:: max(1, len(picks) // n)][:n]
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
