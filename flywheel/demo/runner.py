"""Runs the demo: a real gateway in-process, simulated users through the openai SDK, learning on demand.

The gateway is the real app (`create_app`) served by uvicorn on a free loopback port in a
background thread, with the demo's config (flywheel/demo/config.py) and its SQLite store in the demo
directory. Simulated users (flywheel/demo/users.py) ask the `intents` route through the official
`openai` client and send their feedback to `POST /v1/feedback`. Every `learn_every` calls the demo
runs one learning cycle with `POST /admin/learn` (traffic waits for it): that decides running
canaries and proposes new candidates. Each question is also put to the model directly (a model
name passes through the gateway without template or retrieval), which gives the accuracy the
same questions get without learning. Every `window` calls it reports accuracy, cost per call,
median latency and what the route serves to an `Observer` (flywheel/demo/view.py draws them).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.demo.config import ROUTE, DemoFiles, LearningKnobs, choose_embedder, write_demo_config
from flywheel.demo.stats import CallOutcome, DemoResult, LearnEvent, Serving, WindowStats, learn_event, window_stats
from flywheel.demo.upstream import SimulatedModel, SimulatedUpstream
from flywheel.demo.users import Judge, Utterance, intents, load_sample, traffic
from gateway.config.settings import Settings

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True, slots=True)
class DemoOptions:
    calls: int = 500
    window: int = 50
    seed: int = 0
    correct_share: float = 0.7  # a wrong answer gets a correction this often, else a thumbs-down
    learn_every: int = 25
    directory: Path = Path("data/demo")
    latency_ms: float = 5.0
    embedder: str | None = None  # None: static when available, else hashing


@dataclass(frozen=True, slots=True)
class DemoInfo:
    options: DemoOptions
    files: DemoFiles
    embedder: str
    url: str
    intents: tuple[str, ...]
    utterances: int


class Observer(Protocol):
    """What the runner reports as it goes."""

    def started(self, info: DemoInfo) -> None: ...

    def called(self, outcome: CallOutcome) -> None: ...

    def window(self, stats: WindowStats) -> None: ...

    def learned(self, event: LearnEvent) -> None: ...

    def finished(self, result: DemoResult) -> None: ...


@contextmanager
def serve(settings: Settings, config_path: Path) -> Iterator[str]:
    """The gateway served on a free loopback port in a background thread; yields its base URL."""
    import uvicorn

    from flywheel.app import create_app

    app = create_app(settings, config_path=config_path)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                           loop="asyncio", access_log=False))
    thread = threading.Thread(target=server.run, name="flywheel-demo-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the demo gateway did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def _cost(usage: Any, model: SimulatedModel) -> float:
    if usage is None:
        return 0.0
    prompt, completion = int(usage.prompt_tokens), int(usage.completion_tokens)
    return (prompt * model.input_per_mtok + completion * model.output_per_mtok) / 1e6


class _Admin:
    """The admin API of the demo gateway (the admin key is sent when its variable is set)."""

    def __init__(self, http: httpx.Client, settings: Settings) -> None:
        env = settings.auth.admin_key_env
        key = os.environ.get(env) if env else None
        self.http = http
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.share = settings.learners.canary_share

    def learn(self) -> dict[str, Any]:
        r = self.http.post("/admin/learn", json={"route": ROUTE}, headers=self.headers, timeout=300)
        r.raise_for_status()
        return dict(r.json())

    def serving(self) -> Serving:
        out: dict[str, tuple[str | None, str | None]] = {}
        for kind in ("template", "index"):
            r = self.http.get(f"/admin/routes/{ROUTE}/templates", params={"kind": kind}, headers=self.headers)
            r.raise_for_status()
            body = r.json()
            out[kind] = (body.get("current"), body.get("canary"))
        return Serving(*out["template"], *out["index"], self.share)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything fixed before the gateway starts."""

    options: DemoOptions
    settings: Settings
    files: DemoFiles
    model: SimulatedModel
    embedder: str
    sample: tuple[Utterance, ...]
    judge: Judge


def run_demo(options: DemoOptions, observer: Observer) -> DemoResult:
    """Run the whole demo; the store and config stay in `options.directory` afterwards."""
    try:
        import openai
    except ImportError as exc:  # a dev dependency today; the demo says what to install
        raise RuntimeError("`flywheel demo` drives the gateway with the openai SDK: pip install openai") from exc
    import httpx

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    sample = load_sample()
    labels = intents(sample)
    upstream = SimulatedUpstream(latency_ms=options.latency_ms, seed=options.seed)
    embedder = options.embedder or choose_embedder()
    files, settings = write_demo_config(options.directory, upstream, LearningKnobs(), embedder, labels,
                                        options.learn_every)
    plan = _Plan(options, settings, files, upstream.models[0], embedder, sample,
                 Judge(labels, options.correct_share, options.seed))
    result = DemoResult()
    try:
        _drive(plan, observer, result)
    except (openai.APIError, httpx.HTTPError) as exc:  # the in-process gateway answered an error
        raise RuntimeError(f"the demo gateway failed: {exc}") from exc
    result.wall_s = time.monotonic() - started
    observer.finished(result)
    return result


def _drive(plan: _Plan, observer: Observer, result: DemoResult) -> None:
    """Serve the gateway and send the traffic, learning every `learn_every` calls."""
    import httpx
    import openai

    options, judge, model = plan.options, plan.judge, plan.model
    with ExitStack() as stack:
        url = stack.enter_context(serve(plan.settings, plan.files.config))
        http = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        admin = _Admin(http, plan.settings)
        client = stack.enter_context(openai.OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0))
        observer.started(DemoInfo(options, plan.files, plan.embedder, url, judge.labels, len(plan.sample)))
        window: list[CallOutcome] = []
        serving = Serving()
        asked: set[str] = set()
        for req in traffic(plan.sample, options.calls, options.seed):
            if not window:  # what serves this window's calls (learning only happens between calls)
                serving = admin.serving()
            question, gold = req.utterance.text, req.utterance.intent
            t0 = time.perf_counter()
            resp = client.chat.completions.create(model=ROUTE, user=req.user,
                                                  messages=[{"role": "user", "content": question}])
            latency = time.perf_counter() - t0
            verdict = judge.judge(resp.id, resp.choices[0].message.content or "", gold)
            http.post("/v1/feedback", json=verdict.feedback).raise_for_status()
            # The counterfactual: the model itself, named directly, passes through without template or
            # retrieval. Nobody rates it, so the learners never see it.
            direct = client.chat.completions.create(model=model.key, messages=[{"role": "user", "content": question}])
            kind = "up" if verdict.right else "correction" if "correction" in verdict.feedback else "down"
            outcome = CallOutcome(req.n, resp.id, verdict.right, kind, _cost(resp.usage, model), latency,
                                  question in asked, judge.is_right(direct.choices[0].message.content or "", gold))
            asked.add(question)
            window.append(outcome)
            observer.called(outcome)
            if len(window) == options.window or req.n == options.calls:
                stats = window_stats(window, serving)
                result.windows.append(stats)
                observer.window(stats)
                window = []
            if req.n % options.learn_every == 0 and req.n < options.calls:
                event = learn_event(req.n, admin.learn())
                result.events.append(event)
                observer.learned(event)
        result.final = admin.serving()
