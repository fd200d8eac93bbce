"""The rest of issue 20's series and spans: database write latency, embedder latency and canary
shares on /metrics; a child span for retrieval and a span per learning cycle (in-memory exporter)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.serve.augment import LoadedIndex, RouteServing, ServingSet
from retrieval.embeddings import HashingEmbedder
from retrieval.examples import Example, ExampleIndex
from tests.conftest import fetch_call
from tests.routing.conftest import routing_config, wait_for


def jazz_index() -> ExampleIndex:
    examples = [Example(f"m{i}#f", q, "PlayMusic", f"m{i}", "correction", float(i))
                for i, q in enumerate(["play some jazz music", "play jazz music now"])]
    return ExampleIndex.build(examples, HashingEmbedder())


def ask(gw: Any, text: str) -> httpx.Response:
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "smart", "messages": [{"role": "user",
                                                                                        "content": text}]}, timeout=10)
    assert r.status_code == 200, r.text
    return r


def series(text: str, pattern: str) -> float:
    m = re.search(pattern + r" ([0-9.e+-]+)$", text, re.M)
    assert m, f"no series matching {pattern}"
    return float(m.group(1))


def test_db_write_embedder_latency_and_canary_shares_on_metrics(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path))
    before = httpx.get(f"{gw.url}/metrics").text
    calls_before = series(before, r'flywheel_db_write_seconds_count\{table="calls"\}') \
        if 'flywheel_db_write_seconds_count{table="calls"}' in before else 0.0
    index = jazz_index()
    gw.gateway.augmenter.install("smart", RouteServing(ServingSet(None, LoadedIndex("i1", index)),
                                                       canary_index=LoadedIndex("i2", index), index_share=0.3))
    r = ask(gw, "play jazz music")
    fetch_call(gw, r.json()["id"])  # written: its batch was timed
    fb = httpx.post(gw.v1 + "/feedback", json={"call_id": r.json()["id"], "rating": 1}, timeout=10)
    assert fb.status_code == 201
    text = httpx.get(f"{gw.url}/metrics").text
    assert series(text, r'flywheel_db_write_seconds_count\{table="calls"\}') > calls_before
    assert series(text, r'flywheel_db_write_seconds_sum\{table="calls"\}') > 0
    assert series(text, r'flywheel_embedder_latency_seconds_count\{embedder="[^"]+"\}') >= 1
    assert series(text, r'flywheel_canary_share\{kind="index",route="smart"\}') == 0.3
    assert series(text, r'flywheel_canary_share\{kind="template",route="smart"\}') == 0.0
    assert series(text, r'flywheel_canary_share\{kind="policy",route="smart"\}') == 0.0  # learned, no canary
    assert series(text, r'flywheel_canary_share\{kind="index",route="plain"\}') == 0.0
    gw.gateway.augmenter.install("smart", None)  # the canary ended: its share reads 0 at the next scrape
    assert series(httpx.get(f"{gw.url}/metrics").text, r'flywheel_canary_share\{kind="index",route="smart"\}') == 0


def test_retrieval_child_span_and_a_span_per_learning_cycle(make_gateway: Any, tmp_path: Path) -> None:
    cfg = routing_config(tmp_path)
    cfg["observability"] = {"tracing": True}
    gw = make_gateway(cfg)
    assert gw.gateway.tracing is not None
    exporter = InMemorySpanExporter()
    gw.gateway.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw.gateway.augmenter.install("smart", RouteServing(ServingSet(None, LoadedIndex("i1", jazz_index()))))
    ask(gw, "play jazz music")
    # the server span ends just after the answer was sent: wait for it
    wait_for(lambda: any(s.kind.name == "SERVER" for s in exporter.get_finished_spans()), what="the request span")
    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.kind.name == "SERVER")
    retrieval = [s for s in spans if s.name == "retrieval"]
    assert len(retrieval) == 1
    child = retrieval[0]
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    attrs = dict(child.attributes or {})
    assert attrs["flywheel.route"] == "smart" and attrs["flywheel.index_version"] == "i1"
    assert attrs["flywheel.retrieved"] >= 1  # type: ignore[operator]
    assert server.start_time is not None and child.start_time is not None and child.end_time is not None
    assert server.start_time <= child.start_time <= child.end_time

    exporter.clear()
    ask(gw, "play some music")  # smart retrieves again; the static route `plain` has nothing to retrieve
    httpx.post(gw.v1 + "/chat/completions", json={"model": "plain", "messages": [{"role": "user",
                                                                                    "content": "hi"}]}, timeout=10)
    wait_for(lambda: sum(s.kind.name == "SERVER" for s in exporter.get_finished_spans()) == 2, what="both spans")
    assert sum(s.name == "retrieval" for s in exporter.get_finished_spans()) == 1

    exporter.clear()
    learn = httpx.post(f"{gw.url}/admin/learn", json={"route": "smart"}, timeout=60)
    assert learn.status_code == 200
    wait_for(lambda: any(s.kind.name == "SERVER" for s in exporter.get_finished_spans()), what="the request span")
    spans = exporter.get_finished_spans()
    cycle = [s for s in spans if s.name == "learn smart"]
    assert len(cycle) == 1
    request = next(s for s in spans if s.kind.name == "SERVER")  # POST /admin/learn's
    assert cycle[0].parent is not None and cycle[0].parent.span_id == request.context.span_id
    attrs = dict(cycle[0].attributes or {})
    assert attrs["flywheel.route"] == "smart" and "flywheel.candidates" in attrs and "flywheel.promotions" in attrs



def test_admin_rollbacks_count_in_the_learner_series(make_gateway: Any, tmp_path: Path) -> None:
    import asyncio

    from gateway.config.settings import LearnerSettings
    from gateway.store import open_store
    from gateway.store.artifacts import ArtifactRegistry, Manifest
    from learners.rollout import Rollout

    gw = make_gateway(routing_config(tmp_path))

    async def canary() -> None:  # a template canary on route `plain`, as a learning cycle leaves one
        store = open_store(gw.gateway.settings.store.url)
        try:
            reg = ArtifactRegistry(store)
            await reg.save_candidate("plain", "template", {"text": "Answer briefly."},
                                     Manifest(produced_by="test", note="n"), version="t1")
            assert (await Rollout(reg, LearnerSettings).begin("plain", "template", "t1", "ok")).action == "canary"
        finally:
            await store.close()
    asyncio.run(canary())
    pattern = r'flywheel_learner_rollbacks_total\{kind="template",route="plain"\}'
    text = httpx.get(f"{gw.url}/metrics").text
    before = series(text, pattern) if re.search(pattern, text) else 0.0
    r = httpx.post(f"{gw.url}/admin/routes/plain/rollback", json={"reason": "looks wrong"}, timeout=30)
    assert r.status_code == 200, r.text
    assert series(httpx.get(f"{gw.url}/metrics").text, pattern) == before + 1
