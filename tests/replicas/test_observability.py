"""/metrics exposes the flywheel_* series; tracing makes a span per request with GenAI attributes,
a child span per upstream attempt, and continues the caller's traceparent."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import base_config, fetch_call, script
from tests.replicas.conftest import keyed_config
from tests.replicas.test_limits import chat

ADMIN = "metrics-admin-key"


def flaky_config(upstream: str, tmp: Path, **overrides: Any) -> tuple[dict[str, Any], str]:
    """A route `flaky` whose first model is scripted to fail (retries, then the fallback model-a)."""
    cfg = keyed_config(upstream, tmp, {"app": {"rpm": 1000}, "tight": {"rpm": 1}}, **overrides)
    name = f"flaky-{uuid.uuid4().hex[:6]}"
    price = {"input_per_mtok": 1, "output_per_mtok": 1}
    cfg["models"]["flaky-model"] = {"provider": "up", "name": name, "price": price}
    cfg["routes"]["flaky"] = {"variants": ["flaky-model"], "fallbacks": ["model-a"]}
    return cfg, name


def test_metrics_endpoint_exposes_the_named_series(fake_upstream: str, tmp_path: Path, make_gateway: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_TEST_ADMIN_KEY", ADMIN)
    cfg, name = flaky_config(fake_upstream, tmp_path)
    cfg["learners"] = {"enabled": False, "embedder": "hashing"}
    gw = make_gateway(cfg)
    assert chat(gw.url, "sk-app").status_code == 200
    script(fake_upstream, name, *[{"status": 500, "message": "down"}] * 3)
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": "Bearer sk-app"},
                   json={"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
    assert r.status_code == 200 and r.headers["x-flywheel-variant"] == "model-a"
    assert [chat(gw.url, "sk-tight").status_code for _ in range(2)] == [200, 429]
    fetch_call(gw, r.json()["id"])
    learn = httpx.post(f"{gw.url}/admin/learn", json={"route": "bot"}, headers={"authorization": f"Bearer {ADMIN}"},
                       timeout=60)
    assert learn.status_code == 200
    assert httpx.get(f"{gw.url}/metrics").status_code == 401  # key and route names: the admin's
    text = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text

    def value(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+-]+)$", text, re.M)
        assert m, f"no series matching {pattern}"
        return float(m.group(1))

    assert value(r'flywheel_requests_total\{endpoint="chat",route="bot",status="200",variant="model-a"\}') >= 2
    assert value(r'flywheel_request_latency_seconds_count\{route="bot",variant="model-a"\}') >= 2
    assert value(r'flywheel_tokens_total\{key="app",kind="prompt",route="bot",variant="model-a"\}') > 0
    assert value(r'flywheel_cost_usd_total\{key="app",route="bot",variant="model-a"\}') > 0
    assert value(r'flywheel_upstream_retries_total\{route="flaky"\}') >= 2
    assert value(r'flywheel_fallbacks_total\{route="flaky"\}') >= 1
    assert value(r'flywheel_ratelimit_rejections_total\{key="tight",reason="requests"\}') >= 1
    assert value(r'flywheel_learner_cycles_total\{route="bot"\}') >= 1
    for gauge in ("flywheel_writer_queue_depth", "flywheel_spill_bytes", "flywheel_learner_leader"):
        value(gauge)
    assert value("flywheel_learner_cycles_running") == 0  # the cycle above has ended
    for series in ("flywheel_ttft_seconds", "flywheel_errors_total", "flywheel_learner_promotions_total",
                   "flywheel_learner_rollbacks_total"):
        assert f"# TYPE {series.removesuffix('_total')}" in text


def test_the_cycles_running_gauge_counts_a_cycle_while_it_runs(
        fake_upstream: str, tmp_path: Path, make_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark or an operator waits for learning to be idle by this gauge: it must show a cycle
    started on demand while it runs, and drop when it ends."""
    monkeypatch.setenv("FW_TEST_ADMIN_KEY", ADMIN)
    cfg, _ = flaky_config(fake_upstream, tmp_path)
    cfg["learners"] = {"enabled": False, "embedder": "hashing"}
    gw = make_gateway(cfg)
    loop = gw.gateway.learning
    release = threading.Event()
    original = loop._learn_locked

    async def held(*args: Any, **kwargs: Any) -> Any:
        await asyncio.to_thread(release.wait, 30)
        return await original(*args, **kwargs)

    monkeypatch.setattr(loop, "_learn_locked", held)
    admin = {"authorization": f"Bearer {ADMIN}"}

    def running() -> float:
        text = httpx.get(f"{gw.url}/metrics", headers=admin).text
        m = re.search(r"^flywheel_learner_cycles_running ([0-9.e+-]+)$", text, re.M)
        assert m, "no flywheel_learner_cycles_running gauge"
        return float(m.group(1))

    assert running() == 0
    with ThreadPoolExecutor(1) as pool:
        learn = pool.submit(httpx.post, f"{gw.url}/admin/learn", json={"route": "bot"}, headers=admin, timeout=60)
        deadline = time.monotonic() + 10
        while running() != 1:
            assert time.monotonic() < deadline, "the gauge never showed the running cycle"
            time.sleep(0.02)
        release.set()
        assert learn.result().status_code == 200
    assert running() == 0


def test_a_span_per_request_with_genai_attributes_and_attempt_children(
        fake_upstream: str, tmp_path: Path, make_gateway: Any) -> None:
    cfg, name = flaky_config(fake_upstream, tmp_path, observability={"tracing": True})
    gw = make_gateway(cfg)
    assert gw.gateway.tracing is not None
    exporter = InMemorySpanExporter()
    gw.gateway.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    script(fake_upstream, name, {"status": 500, "message": "once"})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = httpx.post(f"{gw.url}/v1/chat/completions",
                   headers={"authorization": "Bearer sk-app", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
                   json={"model": "flaky", "messages": [{"role": "user", "content": "hello there"}]}, timeout=20)
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind.name == "SERVER"]
    assert len(server) == 1
    span = server[0]
    assert format(span.context.trace_id, "032x") == trace_id  # the caller's trace continues
    assert span.name == "chat flaky"
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "flaky"
    assert attrs["gen_ai.response.model"] == "flaky-model" and attrs["gen_ai.system"] == "flywheel"
    usage = r.json()["usage"]
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attrs["http.response.status_code"] == 200
    children = [s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id]
    assert len(children) == 2  # the failed attempt and the retry that answered
    assert [c.attributes["http.response.status_code"] for c in children] == [500, 200]  # type: ignore[index]
    assert all(c.attributes["gen_ai.request.model"] == "flaky-model" for c in children)  # type: ignore[index]


def test_tracing_is_off_by_default(fake_upstream: str, tmp_path: Path, make_gateway: Any) -> None:
    gw = make_gateway(base_config(fake_upstream, tmp_path))
    assert gw.gateway.tracing is None
