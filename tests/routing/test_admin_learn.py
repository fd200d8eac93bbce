"""`POST /admin/learn` on a learned route runs the routing learner in the same cycle as templates
and retrieval, and reports what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.routing.conftest import HARD, routing_config
from tests.routing.test_request_path import chat, feedback


def test_admin_learn_runs_the_policy_learner(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway(routing_config(tmp_path))
    for i in range(12):
        hard = i % 3 == 0
        r = chat(gw, "smart", f"{'Solve the ' + HARD if hard else 'Opening hours of shop'} number {i}", user=f"u{i}")
        good = not (hard and r.headers["x-flywheel-variant"] == "cheap")
        feedback(gw, r.headers["x-flywheel-call-id"], rating=1 if good else -1)
    report = httpx.post(gw.url + "/admin/learn", json={"route": "smart"}, timeout=60).json()
    assert report["route"] == "smart"
    policy = report["policy"]
    assert policy["route"] == "smart"
    assert policy["outcome"] in ("skipped", "rejected", "canary", "promoted")
    assert policy["reason"]
    plain = httpx.post(gw.url + "/admin/learn", json={"route": "plain"}, timeout=60).json()
    assert plain["policy"] is None, "a route without a learned policy runs no routing learner"
