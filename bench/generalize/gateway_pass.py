"""One pass of a task's stream through a real gateway: simulated users, feedback, learning every N calls.

The gateway runs as `flywheel serve` (a child process) with the documented defaults: config.toml's
`[learners]` defaults (`enabled = true`: the background loop learns on its own schedule and decides
canaries every few seconds and on feedback), plus the issue's protocol, POST /admin/learn every
`learn_every` calls; the shipped route retrieval `{ k = 6, min_score = 0.0, relative_min = 0.5 }`, privacy defaults
(scrubbing before storage), SQLite in a temp dir. `loop=False` is the first run's protocol
(`enabled = false`: learning and canary decisions only inside /admin/learn). The /admin/learn cycles
run in a thread beside the stream, so live latency during a cycle is measured; a cycle still running
at the next boundary is waited for (at most one in flight). The loop's own cycles are read back from
the gateway log (bench/generalize/cycle_log.py).

Users (seeded, the same draws for every arm): thumbs-up when right; when wrong a correction with
the gold answer (share `correct_share`), else a thumbs-down or a "regenerated" signal, 50/50.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.generalize.scoring import is_right
from bench.generalize.tasks import Task
from bench.loadgen import Service, serve_flywheel
from bench.real.bigbench import Item

ADMIN_ENV = "FLYWHEEL_BENCH_ADMIN_KEY"
# $/Mtok (input, output): strong costs 10x cheap (the routing arm)
PRICES: dict[str, tuple[float, float]] = {"cheap": (0.1, 0.2), "strong": (1.0, 2.0)}


@dataclass(frozen=True)
class Upstream:
    """A model the gateway may call: its config name, the llama.cpp alias and base URL."""

    name: str
    alias: str
    base_url: str


def write_config(tmp: Path, port: int, tasks: Sequence[Task], upstreams: Sequence[Upstream],
                 routing_task: str | None, *, loop: bool = True, escalate: bool = False,
                 policy_keys: str = "") -> Path:
    """The bench's config.toml: per task a learning route `<task>`, a frozen `<task>-static` and a
    bare `<task>-bare` (no template or retrieval: for re-sending stored prompts);
    with `routing_task`, `<task>-routed` (learned policy, cheap + strong; `escalate`: an answer the
    route's memory disagrees with is asked again of strong; `policy_keys`: more keys of its policy
    table, e.g. "min_quality = 0.97") and `<task>-strong`.
    `loop`: `[learners] enabled = true` (the documented default) or false (/admin/learn only)."""
    parts = [f'# written by bench/generalize\n[server]\nhost = "127.0.0.1"\nport = {port}\n',
             f'[store]\nurl = "sqlite:///{tmp}/flywheel.db"\nspill_path = "{tmp}/spill.jsonl"\n',
             f'[auth]\nadmin_key_env = "{ADMIN_ENV}"\n']
    for up in upstreams:
        i, o = PRICES[up.name]
        parts.append(f'[providers.{up.name}p]\nkind = "openai"\nbase_url = "{up.base_url}"\ntimeout_s = 600\n'
                     f'[models.{up.name}]\nprovider = "{up.name}p"\nname = "{up.alias}"\n'
                     f"price = {{ input_per_mtok = {i}, output_per_mtok = {o} }}\n"
                     "params = { temperature = 0.0 }\n")
    # the route keys config.toml ships with (retrieval) plus generous timeouts for a CPU model
    retries = 'retries = { attempts = 2, attempt_timeout_s = 600, deadline_s = 1200 }\n'
    common = 'retrieval = { k = 6, min_score = 0.0, relative_min = 0.5 }\n' + retries
    for t in tasks:
        (tmp / f"{t.name}.md").write_text(t.instruction, encoding="utf-8")
        tpl = f'template = "{t.name}.md"\n'
        parts.append(f'[routes.{t.name}]\nvariants = ["cheap"]\npolicy = {{ kind = "static" }}\n{tpl}{common}')
        parts.append(f'[routes.{t.name}-static]\nvariants = ["cheap"]\npolicy = {{ kind = "static" }}\n'
                     f"{tpl}{common}learn = false\n")
        # no template, no retrieval, no learning: stored upstream prompts re-sent as they were (resend.py)
        parts.append(f'[routes.{t.name}-bare]\nvariants = ["cheap"]\npolicy = {{ kind = "static" }}\n'
                     f"{retries}learn = false\n")
        if t.name == routing_task:
            parts.append(f'[routes.{t.name}-routed]\nvariants = ["cheap", "strong"]\n'
                         f'policy = {{ kind = "learned"{", " + policy_keys if policy_keys else ""} }}\n{tpl}{common}'
                         + ('escalate = { to = "strong" }\n' if escalate else ""))
            parts.append(f'[routes.{t.name}-strong]\nvariants = ["strong"]\npolicy = {{ kind = "static" }}\n'
                         f"{tpl}{common}")
    parts.append("[learners]\nenabled = true   # config.toml's defaults: the loop runs beside /admin/learn\n"
                 if loop else "[learners]\nenabled = false   # only POST /admin/learn (the first run's protocol)\n")
    path = tmp / "config.toml"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def start_gateway(config: Path, port: int, tmp: Path, admin_key: str) -> Service:
    """`flywheel serve` as a child process; waits for /healthz."""
    return serve_flywheel(config, port, tmp / "gateway.log", env={ADMIN_ENV: admin_key}, timeout_s=180)


@dataclass
class CallRow:
    """One call of a pass as the user saw it (times are time.time(), for matching the artifact log)."""

    call_id: str
    sent_at: float
    latency_s: float
    right: bool
    cost_usd: float
    variant: str
    feedback: str  # up | correction | down | regenerated
    during_learning: bool = False
    template_version: str | None = None  # filled from the store after the pass
    index_version: str | None = None
    retrieved: int = 0


@dataclass(frozen=True)
class LearnCycle:
    """One POST /admin/learn: when it ran (after which call) and its answer."""

    after: int
    started: float
    ended: float
    report: dict[str, Any]


@dataclass
class PassRun:
    """A whole pass of one route: its calls, its learning cycles and the route's artifact log."""

    route: str
    rows: list[CallRow] = field(default_factory=list)
    cycles: list[LearnCycle] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    resent: dict[int, float] = field(default_factory=dict)  # row index -> latency of its prompt re-sent, learning idle

    @property
    def correct(self) -> list[bool]:
        return [r.right for r in self.rows]


class Client:
    """The simulated users' side: chat calls, feedback and admin requests to one gateway."""

    def __init__(self, url: str, admin_key: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=1800)
        self.admin = {"authorization": f"Bearer {admin_key}"}

    def ask(self, route: str, item: Item, user: str, max_tokens: int) -> tuple[str, str, float, str]:
        """(call id, answer, cost in $ as the gateway reports it, variant)."""
        r = self.http.post("/v1/chat/completions", headers={"authorization": "Bearer bench"},
                           json={"model": route, "messages": [{"role": "user", "content": item.input}],
                                 "max_tokens": max_tokens, "user": user})
        r.raise_for_status()
        body = r.json()
        return (body["id"], body["choices"][0]["message"].get("content") or "",
                float(r.headers.get("x-flywheel-cost-usd", "0")), r.headers.get("x-flywheel-variant", ""))

    def send(self, route: str, messages: list[dict[str, Any]], max_tokens: int) -> float:
        """One chat call with these messages as they are; its latency in seconds."""
        sent = time.time()
        r = self.http.post("/v1/chat/completions", headers={"authorization": "Bearer bench"},
                           json={"model": route, "messages": messages, "max_tokens": max_tokens})
        r.raise_for_status()
        return time.time() - sent

    def cycles_running(self) -> float | None:
        """The gateway's flywheel_learner_cycles_running gauge (None when /metrics does not show it)."""
        r = self.http.get("/metrics", headers=self.admin)
        m = re.search(r"^flywheel_learner_cycles_running ([0-9.e+-]+)$", r.text, re.M) if r.is_success else None
        return float(m.group(1)) if m else None

    def feedback(self, body: dict[str, Any]) -> None:
        """POST /v1/feedback (a refusal is an error: nothing is dropped silently)."""
        self.http.post("/v1/feedback", headers={"authorization": "Bearer bench"}, json=body).raise_for_status()

    def learn(self, route: str) -> dict[str, Any]:
        """POST /admin/learn: one full cycle now; its answer."""
        r = self.http.post("/admin/learn", headers=self.admin, json={"route": route})
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def log(self, route: str) -> list[dict[str, Any]]:
        """The route's artifact transitions (GET /admin/routes/{route}/log)."""
        r = self.http.get(f"/admin/routes/{route}/log", headers=self.admin)
        r.raise_for_status()
        data: list[dict[str, Any]] = r.json()["data"]
        return data


class BackgroundLearner:
    """Runs one learning cycle at a time in a thread beside the stream."""

    def __init__(self, client: Client, route: str) -> None:
        self.client, self.route = client, route
        self.cycles: list[LearnCycle] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, after: int) -> None:
        """Start a cycle (waiting for the previous one first)."""
        self.join()

        def run() -> None:
            t0 = time.time()
            try:
                rep = self.client.learn(self.route)
            except BaseException as exc:  # reported by join(), not lost in the thread
                self._error = exc
                return
            self.cycles.append(LearnCycle(after, t0, time.time(), rep))

        self._thread = threading.Thread(target=run, name=f"learn-{self.route}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the running cycle; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def run_pass(client: Client, task: Task, route: str, stream: Sequence[Item], *, learns: bool, learn_every: int,
             seed: int, correct_share: float = 0.7, progress_every: int = 50) -> PassRun:
    """Stream every item through `route` with feedback; learning every `learn_every` calls if `learns`."""
    rng = random.Random(seed)  # every arm sees the same user behaviour draws
    run = PassRun(route)
    learner = BackgroundLearner(client, route) if learns else None
    started = time.perf_counter()
    for i, item in enumerate(stream):
        user = f"user-{i % 50}"
        busy_before = learner.busy if learner else False
        sent = time.time()
        call_id, answer, cost, variant = client.ask(route, item, user, task.max_tokens)
        latency = time.time() - sent
        right = is_right(task.shape, answer, item)
        body: dict[str, Any] = {"call_id": call_id, "user": user}
        if right:
            body["rating"], kind = 1, "up"
        elif rng.random() < correct_share:
            body["correction"], kind = item.target, "correction"
        elif rng.random() < 0.5:
            body["rating"], kind = -1, "down"
        else:
            body["signal"], kind = "regenerated", "regenerated"
        client.feedback(body)
        busy = busy_before or (learner.busy if learner else False)
        run.rows.append(CallRow(call_id, sent, latency, right, cost, variant or "cheap", kind, busy))
        if learner and (i + 1) % learn_every == 0 and i + 1 < len(stream):
            learner.start(i + 1)
        if (i + 1) % progress_every == 0 or i + 1 == len(stream):
            w = run.correct[-progress_every:]
            print(f"    {route:>18} {i + 1:>4} calls: last {len(w)} acc {sum(w) / len(w):6.1%}, "
                  f"elapsed {time.perf_counter() - started:.0f} s", flush=True)
    if learner:
        learner.join()
        run.cycles = sorted(learner.cycles, key=lambda c: c.after)
        for c in run.cycles:
            cands = ", ".join(f"{x['kind']} {x['version']} {x['outcome']}" for x in c.report.get("candidates", []))
            print(f"      learn after {c.after}: {c.ended - c.started:.0f} s, {c.report.get('examples')} examples, "
                  f"{c.report.get('eval_calls')} eval calls; {cands or 'no candidate'}", flush=True)
        run.log = client.log(route)
    run.wall_s = time.perf_counter() - started
    return run


def attach_served_artifacts(db: Path, runs: Sequence[PassRun], wait_s: float = 15.0) -> None:
    """Fill each call's template/index version and retrieved-example count from the gateway's store.

    The gateway writes calls in batches off the request path, so this polls until all are there.
    """
    by_id = {r.call_id: r for run in runs for r in run.rows}
    deadline = time.monotonic() + wait_s
    found: set[str] = set()
    while True:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            ids = list(by_id)
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                q = ("SELECT id, template_version, index_version, retrieved_ids FROM calls WHERE id IN ("
                     + ",".join("?" * len(chunk)) + ")")
                for cid, tv, iv, rids in con.execute(q, chunk):
                    row = by_id[cid]
                    row.template_version, row.index_version = tv, iv
                    row.retrieved = len(json.loads(rids or "[]"))
                    found.add(cid)
        finally:
            con.close()
        if len(found) == len(by_id) or time.monotonic() > deadline:
            return
        time.sleep(1.0)
