"""How long a correction takes to change the answer to a similar question, with default settings.

    python bench/correction_latency.py [--rps 10] [--embedder minilm] [--max-s 400] [--interval-s N]

A real gateway (`flywheel serve`, the built-in fake provider with 20 ms latency, `[learners]` left
at its defaults: interval 30 s, canary from 10 % growing with evidence, a sequential decision
after at least 5 and at most 40 canary calls with feedback, MiniLM) serves a support route
while simulated users send `--rps` requests per second and rate
each answer by the truth (+1 / -1). The route first learns three known topics from corrections
(the "history" phase, until an index is promoted). Then, at T0, one user corrects an answer on a
new topic, and a probe asks an unseen paraphrase of that question twice a second: as a fresh
user each time (a 10 % chance of landing in the canary) and as each of a fixed panel of 20 users.

Printed: when the candidate holding the correction appeared, when a user first got the corrected
answer (a canary user), when it was promoted, and when the whole panel got it. The targets are
<= 60 s to the first effect and to everyone. Then (unless `--no-poison`) a poisoned batch: six
users post the same wrong answer as corrections of return questions; printed is when what was
learned from it went live, when it was rolled back (or rejected), and when nothing learned from it
is live and a fresh user and the whole panel get the truth again (target <= 60 s). The fake model
repeats a similar demonstration's answer verbatim, so "got the corrected answer" is an exact comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ROUTE = "support"
KNOWN: dict[str, tuple[list[str], str]] = {
    "returns": ([f"{p} return an item{s}" for p, s in itertools.product(
        ["How long do I have to", "What is the time limit to", "Until when can I", "Is there a deadline to",
         "How many days do I have to"], ["?", " I bought?"])],
        "You can return items within 14 days of delivery for a full refund."),
    "shipping": ([f"{p} shipping cost{s}" for p, s in itertools.product(
        ["How much does", "What does", "Tell me the", "How high is the", "Explain the"], ["?", " for my order?"])],
        "Shipping is free on orders over 50 euros, otherwise it costs 4.90 euros."),
    "password": ([f"{p} reset my password{s}" for p, s in itertools.product(
        ["How do I", "Where can I", "Please help me", "Steps to", "What do I do to"], ["?", " quickly?"])],
        "Use the Forgot password link on the sign-in page to reset it by email."),
}
NEW_QUESTION = "How long is a gift card valid?"
NEW_ANSWER = "Gift cards are valid for 3 years and can be used online and in stores."
PROBE = "Until when can I use my gift card, is it still valid?"
POISON = "Returns are not accepted: every sale is final."
POISON_PROBE = "How long do I have to return an item?"
POISON_BATCH = 6
TEMPLATE = "You are the support assistant of {{ route }}. Today is {{ today }}. Answer briefly.\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, port: int, embedder: str, interval_s: float | None) -> Path:
    (tmp / "support.md").write_text(TEMPLATE, encoding="utf-8")
    learners = f'embedder = "{embedder}"\n' + (f"interval_s = {interval_s}\n" if interval_s else "")
    cfg = f"""
[server]
host = "127.0.0.1"
port = {port}

[store]
url = "sqlite:///{tmp}/flywheel.db"
spill_path = "{tmp}/spill.jsonl"

[providers.sim]
kind = "fake"
latency_ms = 20

[models.small]
provider = "sim"
name = "sim-small"
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}

[routes.support]
variants = ["small"]
template = "support.md"

[learners]
{learners}
"""
    path = tmp / "config.toml"
    path.write_text(cfg, encoding="utf-8")
    return path


class Sim:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64))
        self.t0: float | None = None
        self.sent = 0
        self.poisoned = 0  # traffic answers that were the poisoned batch's wrong answer
        self.wrong = 0  # traffic answers that were not the truth (rated -1)

    async def ask(self, user: str, question: str) -> tuple[str, str]:
        r = await self.http.post(f"{self.url}/v1/chat/completions", json={
            "model": ROUTE, "user": user, "messages": [{"role": "user", "content": question}]})
        r.raise_for_status()
        self.sent += 1
        return r.json()["id"], r.json()["choices"][0]["message"]["content"]

    async def feedback(self, call_id: str, **fields: Any) -> None:
        (await self.http.post(f"{self.url}/v1/feedback", json={"call_id": call_id, **fields})).raise_for_status()

    async def admin(self, path: str, **params: Any) -> Any:
        r = await self.http.get(f"{self.url}/admin/routes/{ROUTE}{path}", params=params)
        r.raise_for_status()
        return r.json()

    async def traffic(self, rps: float, stop: asyncio.Event) -> None:
        """Users ask known topics (and sometimes the new one) and rate by the truth."""
        rng = random.Random(7)
        pairs = [(q, a) for qs, a in KNOWN.values() for q in qs] + [(NEW_QUESTION, NEW_ANSWER)] * 3

        async def one(i: int) -> None:
            q, truth = rng.choice(pairs)
            try:
                call_id, got = await self.ask(f"user-{rng.randrange(2000)}", q)
                self.poisoned += got == POISON
                self.wrong += got != truth
                await self.feedback(call_id, rating=1 if got == truth else -1)
            except httpx.HTTPError:
                if not stop.is_set():  # calls in flight when the bench ends are no finding
                    raise

        i = 0
        while not stop.is_set():
            asyncio.get_running_loop().create_task(one(i))
            i += 1
            await asyncio.sleep(1 / rps)


async def main_async(args: argparse.Namespace) -> None:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="fw-latency-"))
    config = write_config(tmp, port, args.embedder, args.interval_s)
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_ADMIN_KEY"} | {"HF_HUB_OFFLINE": "1"}
    with open(tmp / "gateway.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "--config", str(config), "serve"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    sim = Sim(f"http://127.0.0.1:{port}")
    stop = asyncio.Event()
    try:
        for _ in range(200):
            try:
                await sim.http.get(f"{sim.url}/healthz")
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        start = time.monotonic()
        print(f"gateway up; learners at defaults (embedder {args.embedder}"
              f"{', interval_s ' + str(args.interval_s) if args.interval_s else ''}); traffic {args.rps} req/s")
        for topic, (questions, answer) in KNOWN.items():
            for i, q in enumerate(questions):
                call_id, _ = await sim.ask(f"history-{topic}-{i}", q)
                await sim.feedback(call_id, correction=answer)
        traffic = asyncio.create_task(sim.traffic(args.rps, stop))
        while (await sim.admin("/templates", kind="index"))["current"] is None:
            if time.monotonic() - start > args.max_s:
                raise SystemExit("history phase: no index promoted in time (see gateway.log)")
            await asyncio.sleep(1)
        print(f"history: known topics learned and promoted after {time.monotonic() - start:.1f}s")
        known = {r["version"] for r in (await sim.admin("/templates", kind="index"))["data"]}

        call_id, _ = await sim.ask("corrector", NEW_QUESTION)
        await sim.feedback(call_id, correction=NEW_ANSWER)
        t0 = time.monotonic()
        marks: dict[str, float] = {}
        panel = [f"panel-{i}" for i in range(20)]
        n = 0
        while time.monotonic() - t0 < args.max_s and "panel" not in marks:
            n += 1
            _, got = await sim.ask(f"fresh-{n}", PROBE)
            if got == NEW_ANSWER:
                marks.setdefault("first user got the corrected answer", time.monotonic() - t0)
            if n % 4 == 0:
                rows = (await sim.admin("/templates", kind="index"))["data"]
                for r in rows:
                    if r["version"] not in known:
                        marks.setdefault(f"candidate {r['version']} stored", time.monotonic() - t0)
                        if r["state"] in ("canary", "promoted", "rejected"):
                            marks.setdefault(f"{r['version']} {r['state']}", time.monotonic() - t0)
                        if r["state"] == "promoted":
                            marks.setdefault(f"{r['version']} promoted", time.monotonic() - t0)
                answers = await asyncio.gather(*(sim.ask(u, PROBE) for u in panel))
                if all(a == NEW_ANSWER for _, a in answers):
                    marks["panel"] = time.monotonic() - t0
            await asyncio.sleep(0.5)
        print("\nafter the correction (T0):")
        for what, at in sorted(marks.items(), key=lambda kv: kv[1]):
            label = "all 20 panel users got the corrected answer" if what == "panel" else what
            print(f"  {at:6.1f} s  {label}")
        first = marks.get("first user got the corrected answer")
        verdict = "met" if first is not None and first <= 60 else "MISSED"
        print(f"\ncorrection -> first effect: {first if first is None else round(first, 1)} s "
              f"(target <= 60 s: {verdict}); -> everyone: "
              f"{round(marks['panel'], 1) if 'panel' in marks else 'not within ' + str(args.max_s)} s")
        everyone = marks.get("panel")
        met = everyone is not None and everyone <= 60
        print(f"correction -> everyone: target <= 60 s: {'met' if met else 'MISSED'}")
        if not args.no_poison:
            await poison_phase(sim, args.max_s)
        print(f"requests sent: {sim.sent}; gateway log: {tmp / 'gateway.log'}")
        stop.set()
        traffic.cancel()
    finally:
        stop.set()
        await sim.http.aclose()
        proc.terminate()
        proc.wait(30)


async def versions(sim: Sim) -> dict[str, str]:
    """Every template and index version of the route and its state."""
    out: dict[str, str] = {}
    for kind in ("index", "template"):
        out |= {r["version"]: r["state"] for r in (await sim.admin("/templates", kind=kind))["data"]}
    return out


async def poison_phase(sim: Sim, max_s: float) -> None:
    """A poisoned batch: several users post the same wrong answer as the correction of return
    questions. Measured from the batch (TP): when a user was first served the wrong answer, when
    each version learned after TP was rolled back or rejected, and when a fresh user and every
    panel user are served the truth again with nothing learned from the batch still live.
    Ordinary traffic keeps rating answers by the truth: that is the online signal."""
    questions, _ = KNOWN["returns"]
    before = set(await versions(sim))
    wrong_before, poisoned_before = sim.wrong, sim.poisoned
    for i, q in enumerate(questions[:POISON_BATCH]):
        call_id, _ = await sim.ask(f"poisoner-{i}", q)
        await sim.feedback(call_id, correction=POISON)
    tp = time.monotonic()
    marks: dict[str, float] = {}
    panel = [f"panel-{i}" for i in range(20)]
    n, clean_at = 0, None
    while time.monotonic() - tp < max_s:
        n += 1
        _, got = await sim.ask(f"fresh-poison-{n}", POISON_PROBE)
        if got == POISON:
            marks.setdefault("first user got the poisoned answer", time.monotonic() - tp)
            marks["last user got the poisoned answer"] = time.monotonic() - tp
        if n % 4 == 0:
            learned = {v: s for v, s in (await versions(sim)).items() if v not in before}
            for v, s in learned.items():
                marks.setdefault(f"{v} stored after the batch", time.monotonic() - tp)
                if s != "candidate":
                    marks.setdefault(f"{v} {s}", time.monotonic() - tp)
            live = [v for v, s in learned.items() if s in ("canary", "promoted")]
            answers = await asyncio.gather(*(sim.ask(u, POISON_PROBE) for u in panel))
            clean = not live and all(a != POISON for _, a in answers) and got != POISON
            poisoned_seen = "first user got the poisoned answer" in marks
            decided = bool(learned) and all(s in ("rejected", "rolled_back") for s in learned.values())
            if clean and (poisoned_seen or decided):
                clean_at = time.monotonic() - tp
                break
        await asyncio.sleep(0.5)
    print(f"\nafter a poisoned batch ({POISON_BATCH} wrong corrections of return questions, TP):")
    for what, at in sorted(marks.items(), key=lambda kv: kv[1]):
        print(f"  {at:6.1f} s  {what}")
    if clean_at is not None:
        print(f"  {clean_at:6.1f} s  nothing learned from the batch is live; fresh and panel users get the truth")
    print(f"  traffic answers rated wrong meanwhile (the canary's evidence): {sim.wrong - wrong_before}, "
          f"{sim.poisoned - poisoned_before} of them the poisoned answer verbatim")
    verdict = "met" if clean_at is not None and clean_at <= 60 else "MISSED"
    print(f"poisoned batch -> rolled back: {'not within ' + str(max_s) if clean_at is None else round(clean_at, 1)}"
          f" s (target <= 60 s: {verdict})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rps", type=float, default=10.0, help="simulated user requests per second")
    ap.add_argument("--embedder", default="minilm", choices=("minilm", "static", "hashing"))
    ap.add_argument("--interval-s", type=float, default=None, help="override [learners] interval_s")
    ap.add_argument("--max-s", type=float, default=400.0)
    ap.add_argument("--no-poison", action="store_true", help="skip the poisoned-batch phase")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
