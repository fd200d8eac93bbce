"""The admin endpoints and CLI commands of the learning loop (docs/architecture.md, contracts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.cli import main
from tests.learners.scenario import ROUTE, Client, config, correct_everything, write_toml


@pytest.fixture
def learned(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> tuple[Client, dict[str, Any]]:
    """A gateway whose support route has learned once: t1 and i1 in canary."""
    cfg = config(fake_upstream, tmp_path)
    c = Client(make_gateway(cfg).url)
    correct_everything(c)
    report = c.learn()
    assert {x["version"]: x["outcome"] for x in report["candidates"]} == {"i1": "canary", "t1": "canary"}, report
    return c, cfg


def test_templates_listing(learned: tuple[Client, dict[str, Any]]) -> None:
    c, _ = learned
    out = c.get(f"/admin/routes/{ROUTE}/templates")
    assert (out["current"], out["canary"]) == ("t0", "t1")
    rows = {r["version"]: r for r in out["data"]}
    assert rows["t0"]["state"] == "promoted" and rows["t0"]["parent"] is None and rows["t0"]["current"]
    t1 = rows["t1"]
    assert t1["state"] == "canary" and t1["parent"] == "t0" and t1["created_at"] > 0
    assert t1["evaluation"]["offline"]["verdict"] == "passed" and t1["evaluation"]["offline"]["trials"]
    assert t1["evidence_calls"] > 0 and t1["produced_by"].startswith("template(")
    kinds = {r["kind"] for r in c.get(f"/admin/routes/{ROUTE}/artifacts")["data"]}
    assert kinds == {"template", "index"}


def test_diff_endpoint_shows_the_change_and_its_evidence(learned: tuple[Client, dict[str, Any]]) -> None:
    c, _ = learned
    d = c.get(f"/admin/routes/{ROUTE}/templates/diff", **{"from": "t0", "to": "t1"})
    assert (d["from_version"], d["to_version"], d["kind"]) == ("t0", "t1", "template")
    lines = d["diff"].splitlines()
    assert lines[:2] == ["--- t0", "+++ t1"]
    assert any(line.startswith("+- Answers about") or line == "+Examples:" for line in lines), d["diff"]
    assert not any(line.startswith("-") and not line.startswith("---") for line in lines)  # t1 only adds
    assert d["evidence"] and d["evidence_total"] >= len(d["evidence"])
    for item in d["evidence"]:  # which examples a template picked varies with their (random) ids
        assert item["question"] and item["answer"] == f"You said: {item['question']}"
    assert any(f["correction"] and f["source"] == "user" for item in d["evidence"] for f in item["feedback"])
    assert d["states"] == {"t0": "promoted", "t1": "canary"}
    assert c.get(f"/admin/routes/{ROUTE}/templates/diff")["to_version"] == "t1"  # default: newest vs parent
    index = c.get(f"/admin/routes/{ROUTE}/templates/diff", kind="index")
    assert index["from_version"] is None and "+User: How do I reset my password?" in index["diff"]


def test_diff_and_listing_errors(learned: tuple[Client, dict[str, Any]]) -> None:
    c, _ = learned
    base = f"{c.url}/admin/routes"
    assert httpx.get(f"{base}/{ROUTE}/templates/diff", params={"to": "t9"}).status_code == 404
    assert httpx.get(f"{base}/nope/templates").json()["error"]["code"] == "route_not_found"
    assert httpx.get(f"{base}/{ROUTE}/templates", params={"kind": "x"}).status_code == 400
    r = httpx.post(f"{c.url}/admin/learn", json={"route": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "route"
    assert httpx.post(f"{c.url}/admin/learn", json={}).status_code == 400


def test_rollback_endpoint(learned: tuple[Client, dict[str, Any]]) -> None:
    c, _ = learned
    r = c.http.post(f"{c.url}/admin/routes/{ROUTE}/rollback", json={"version": "t1", "reason": "looks odd"})
    assert r.status_code == 200 and r.json()["version"] == "t1" and r.json()["reason"] == "looks odd"
    r = c.http.post(f"{c.url}/admin/routes/{ROUTE}/rollback")  # no body: the running canary (i1)
    assert r.status_code == 200 and (r.json()["kind"], r.json()["version"]) == ("index", "i1")
    _, answer, _ = c.ask("anyone", "How do I reset my password?")  # served by t0 alone again
    assert answer.startswith("You said:")
    r = c.http.post(f"{c.url}/admin/routes/{ROUTE}/rollback", json={"version": "t1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "rollback_refused"
    assert c.http.post(f"{c.url}/admin/routes/{ROUTE}/rollback", json={"version": "zz"}).status_code == 400
    log = c.get(f"/admin/routes/{ROUTE}/log")["data"]
    assert ("t1", "canary", "rolled_back", "looks odd") in [(e["version"], e["from_state"], e["to_state"], e["reason"])
                                                             for e in log]


def test_cli_diff_learn_and_rollback(learned: tuple[Client, dict[str, Any]], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    c, cfg = learned
    path = write_toml(cfg, tmp_path / "config.toml")
    assert main(["--config", str(path), "prompts", "diff", ROUTE, "t0", "t1", "--no-color", "--width", "200"]) == 0
    out = capsys.readouterr().out
    assert "--- t0" in out and "+++ t1" in out and "offline: offline token_f1" in out and "evidence (" in out
    assert main(["--config", str(path), "prompts", "diff", ROUTE, "t7"]) == 1
    assert main(["--config", str(path), "learn", ROUTE, "--url", c.url]) == 0
    out = capsys.readouterr().out
    assert f"route {ROUTE}" in out and "template t1: waiting" in out  # learning goes on beside the canary
    assert main(["--config", str(path), "rollback", ROUTE, "i1", "--url", c.url]) == 0
    assert "index i1: rolled back" in capsys.readouterr().out


def test_cli_learn_and_rollback_in_process(make_gateway: Any, fake_upstream: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(fake_upstream, tmp_path, canary_share=0.0)
    gw = make_gateway(cfg)
    correct_everything(Client(gw.url))
    gw.stop()
    path = write_toml(cfg, tmp_path / "config.toml")
    assert main(["--config", str(path), "learn", ROUTE]) == 0
    out = capsys.readouterr().out
    assert "index i1: promoted - promoted without canary" in out
    assert main(["--config", str(path), "rollback", ROUTE]) == 0  # the latest promotion
    assert "rolled back" in capsys.readouterr().out
    assert main(["--config", str(path), "rollback", ROUTE, "i1"]) == 0
    assert main(["--config", str(path), "rollback", ROUTE, "i1"]) == 1  # already rolled back
    assert main(["--config", str(path), "prompts", "log", ROUTE, "--width", "250"]) == 0
    log = capsys.readouterr().out
    assert "promoted -> rolled_back" in log and "rolled back by admin (CLI)" in log
