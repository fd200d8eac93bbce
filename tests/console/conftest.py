"""A gateway whose support route learned an index and a template from fake-provider traffic with
corrections, then a second index now in canary: what the console tests look at."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.learners.scenario import ROUTE, TOPICS, Client, config, correct_everything, judged_traffic

ADMIN_KEY = "console-test-admin-key"
KEY_ENV = "FLYWHEEL_CONSOLE_TEST_ADMIN_KEY"
EXTRA = {  # a topic the first cycles never saw: its corrections make the second index version
    "questions": ["How do I cancel my subscription?", "Can I cancel my subscription online?",
                  "Where do I cancel a subscription?"],
    "answer": "Cancel any time under Account > Subscription; you keep access until the period ends.",
}


@dataclass
class Learned:
    gw: RunningGateway
    client: Client  # as users and as the admin (bearer admin key)
    previous_index: str  # promoted
    canary_index: str  # in canary, served to everyone (canary_share 1.0)


def console_config(tmp: Path, **learners: Any) -> dict[str, Any]:
    """The learning scenario's config on the built-in fake provider, with an admin key."""
    cfg = config("http://127.0.0.1:9/v1", tmp, **learners)
    cfg["providers"] = {"up": {"kind": "fake"}}
    cfg["auth"] = {"admin_key_env": KEY_ENV}
    return cfg


@pytest.fixture
def learned(make_gateway: Callable[..., RunningGateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Learned:
    monkeypatch.setenv(KEY_ENV, ADMIN_KEY)
    gw = make_gateway(console_config(tmp_path, canary_share=1.0))
    c = Client(gw.url)
    c.http.headers["authorization"] = f"Bearer {ADMIN_KEY}"
    assert correct_everything(c) == sum(len(q) for q, _ in TOPICS.values())
    first = {x["kind"]: x for x in c.learn()["candidates"]}
    assert first["index"]["outcome"] == "canary" and "template" in first, first
    judged_traffic(c, 12, "judge")
    second = c.learn()
    promoted = {d["version"] for d in second["rollout"] if d["action"] == "promoted"}
    assert first["index"]["version"] in promoted, second["rollout"]
    for i, q in enumerate(EXTRA["questions"]):
        call_id, _, _ = c.ask(f"extra-{i}", q)
        c.feedback(call_id, correction=EXTRA["answer"])
    third = {x["kind"]: x for x in c.learn()["candidates"]}
    assert third.get("index", {}).get("outcome") == "canary", third
    return Learned(gw, c, first["index"]["version"], third["index"]["version"])


def sign_in(url: str) -> httpx.Client:
    """An httpx client holding a console session."""
    h = httpx.Client(base_url=url, follow_redirects=False, timeout=60)
    r = h.post("/console/login", data={"key": ADMIN_KEY, "next": "/console/routes"})
    assert r.status_code == 303, r.text
    return h


__all__ = ["ROUTE", "Learned", "sign_in"]
