"""Route reports on a small seeded store: the pure figures, the CLI and the admin endpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from flywheel.cli import main
from gateway.reports.route_report import RouteReport, build_report, format_report, parse_duration
from gateway.store import open_store
from gateway.store.records import CallRecord, Escalation, FeedbackRecord
from tests.routing.conftest import routing_config, write_config

H = 3600.0


def call(i: int, at: float, variant: str, cost: float | None, latency: float, status: int = 200) -> CallRecord:
    return CallRecord(id=f"c{i}", route="smart", variant=variant, model=variant, created_at=at, cost_usd=cost,
                      latency_ms=latency, status=status, choice_probability=0.5,
                      request={"messages": [{"role": "user", "content": f"q{i}"}]})


def seed(end: float) -> tuple[list[CallRecord], list[FeedbackRecord]]:
    """Window 1 (2h..1h ago): cheap x3, strong x1. Window 2 (last hour): cheap x1 failed, strong x2."""
    w1, w2 = end - 2 * H + 10, end - H + 10
    calls = [
        call(1, w1, "cheap", 0.001, 10), call(2, w1 + 1, "cheap", 0.001, 30), call(3, w1 + 2, "cheap", 0.001, 20),
        call(4, w1 + 3, "strong", 0.02, 100),
        call(5, w2, "cheap", None, 5, status=502), call(6, w2 + 1, "strong", 0.02, 90),
        call(7, w2 + 2, "strong", 0.02, 110),
    ]
    calls[-1].escalation = Escalation("cheap", "cheap", cost_usd=0.001, same_answer=False)  # strong re-answered
    feedback = [
        FeedbackRecord("c1", rating=1, created_at=w1 + 100), FeedbackRecord("c2", rating=-1, created_at=w1 + 100),
        FeedbackRecord("c2", rating=1, created_at=w1 + 200),  # the newest row wins: c2 is good after all
        FeedbackRecord("c3", correction="no, it is 42", created_at=w1 + 100),  # a correction: quality 0
        FeedbackRecord("c4", rating=1, created_at=w1 + 100), FeedbackRecord("c6", score=0.25, created_at=w2 + 100),
    ]
    return calls, feedback


def figures(report: RouteReport) -> dict[tuple[int, str], Any]:
    return {(i, v.variant): v for i, w in enumerate([*report.windows, report.total]) for v in w.variants}


def test_report_figures() -> None:
    end = 1_700_000_000.0
    calls, fb = seed(end)
    report = build_report("smart", calls, fb, start=end - 2 * H, end=end, window_s=H, metric="any",
                          variants=["cheap", "strong"])
    f = figures(report)
    assert [w.calls for w in report.windows] == [4, 3] and report.total.calls == 7
    cheap1 = f[(0, "cheap")]
    assert cheap1.share == 0.75 and cheap1.rated == 3 and cheap1.quality == pytest.approx(2 / 3)
    assert cheap1.successes == 2 and cheap1.cost_per_call == pytest.approx(0.001)
    assert cheap1.cost_per_success == pytest.approx(0.0015) and cheap1.p50_latency_ms == 20
    cheap2 = f[(1, "cheap")]
    assert cheap2.errors == 1 and cheap2.successes == 0 and cheap2.cost_per_success is None
    assert cheap2.p50_latency_ms is None
    strong2 = f[(1, "strong")]  # c6 scored 0.25: answered but judged bad
    assert strong2.share == pytest.approx(2 / 3) and strong2.quality == 0.25 and strong2.successes == 1
    assert strong2.cost_per_success == pytest.approx(0.04) and strong2.p50_latency_ms == 100
    total_strong = f[(2, "strong")]
    assert total_strong.calls == 3 and total_strong.cost_per_call == pytest.approx(0.02)
    assert (total_strong.escalated, f[(2, "cheap")].escalated) == (1, 0)
    # under "rating" the score says nothing: c6 counts as unrated and successful
    by_rating = figures(build_report("smart", calls, fb, start=end - 2 * H, end=end, window_s=H, metric="rating"))
    assert by_rating[(1, "strong")].rated == 0 and by_rating[(1, "strong")].successes == 2
    text = format_report(report)
    assert "whole period (7 calls)" in text and "cheap" in text and "$0.0015" in text


def test_parse_duration() -> None:
    assert parse_duration("90") == 90 and parse_duration("15m") == 900 and parse_duration("2d") == 172800
    with pytest.raises(ValueError):
        parse_duration("soon")


async def seed_store(url: str, end: float) -> None:
    store = open_store(url)
    await store.migrate()
    calls, fb = seed(end)
    await store.insert_calls(calls)
    for row in fb:
        await store.insert_feedback(row)
    await store.close()


def test_cli_and_admin_endpoint(make_gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    cfg = routing_config(tmp_path)
    asyncio.run(seed_store(cfg["store"]["url"], time.time()))
    path = tmp_path / "config.toml"
    write_config(path, cfg)
    assert main(["--config", str(path), "routes", "report", "smart", "--window", "1h", "--windows", "2",
                 "--metric", "any", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["route"] == "smart" and out["total"]["calls"] == 7 and len(out["windows"]) == 2
    assert main(["--config", str(path), "routes", "report", "smart", "--window", "1h", "--windows", "2"]) == 0
    assert "whole period (7 calls)" in capsys.readouterr().out
    assert main(["--config", str(path), "routes", "report", "nope"]) == 2

    gw = make_gateway(cfg)
    r = httpx.get(gw.url + "/admin/routes/smart/report", params={"window": "1h", "windows": "2", "metric": "any"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"]["calls"] == 7 and body["metric"] == "any"
    strong = next(v for v in body["total"]["variants"] if v["variant"] == "strong")
    assert strong["calls"] == 3 and strong["cost_per_call"] == pytest.approx(0.02)
    assert httpx.get(gw.url + "/admin/routes/nope/report").status_code == 404
    bad = httpx.get(gw.url + "/admin/routes/smart/report", params={"window": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "window"
    assert httpx.get(gw.url + "/admin/routes/smart/report").json()["metric"] == "rating"  # the route's metric
