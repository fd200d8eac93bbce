"""`POST /admin/learn` on a learned route runs the routing learner in the same cycle as templates
and retrieval, and reports what it did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from learners.dataset import in_heldout
from tests.routing.conftest import HARD, routing_config
from tests.routing.test_request_path import chat, feedback, routing


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


EASY = ["Opening hours of the shop", "Where is my parcel", "How do I reset my password", "Price of the blue mug",
        "Can I pay by card", "Do you ship to Norway", "Is the cafe open on Sunday", "Return a broken kettle",
        "Change my delivery address", "Cancel my subscription"]
HARD_ONES = [f"Solve the {HARD} of {f}" for f in ("x squared", "sin x", "e to the x", "one over x", "log x")]


def test_replays_teach_the_router_what_the_variant_it_never_chose_would_do(make_gateway: Any, tmp_path: Path) -> None:
    """Every call goes to `strong` (priors, no exploration); replays of the rated calls on both
    variants show `cheap` answering the easy ones as well: easy requests move to it, hard ones stay."""
    cfg = routing_config(tmp_path, replays=20)
    cfg["learners"].update(heldout_share=0.99, min_samples=1)  # (nearly) every rated call is a case
    gw = make_gateway(cfg)
    ids = []
    for i, text in enumerate(EASY + HARD_ONES):
        r = chat(gw, "smart", text, user=f"u{i}")
        assert r.headers["x-flywheel-variant"] == "strong"
        feedback(gw, r.headers["x-flywheel-call-id"], rating=1)
        ids.append(r.headers["x-flywheel-call-id"])
    cases = sum(in_heldout(c, 0, 0.99) for c in ids)
    report = httpx.post(gw.url + "/admin/learn", json={"route": "smart"}, timeout=60).json()
    assert report["eval_calls"] >= 2 * cases, report
    assert routing(gw).stats.replay_updates == 2 * cases
    # asked again, each replayed request goes where its replay showed it belongs (a request the
    # replays did not cover depends on how ~15 hashed points generalise: borderline by design)
    replayed = [t for t, c in zip(EASY + HARD_ONES, ids, strict=True) if in_heldout(c, 0, 0.99)]
    assert {t for t in replayed if t in EASY} and {t for t in replayed if t in HARD_ONES}
    served = {t: chat(gw, "smart", t).headers["x-flywheel-variant"] for t in replayed}
    assert served == {t: "cheap" if t in EASY else "strong" for t in replayed}
