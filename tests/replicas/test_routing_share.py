"""Online routing updates across replicas (gateway/serve/routing_share.py): feedback that arrives at
replica A about a call replica B routed reaches B's policy (forwarded through Redis), and every
update either makes reaches the other's policy, so both decide from the same evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.serve.routing import LearnedRouting
from policies import LearnedPolicy
from tests.replicas.conftest import REDIS_URL
from tests.routing.conftest import HARD, routing_config, wait_for

EASY_PRIORS = {"cheap": 0.85, "strong": 0.9}  # the cheap model is tried first


def replicas(make_gateway: Any, tmp: Path, prefix: str, store_url: str | None = None) -> tuple[Any, Any]:
    """Two gateways with the learned route `smart` on one store and one Redis."""
    gws = []
    for name in ("a", "b"):
        cfg = routing_config(tmp / name, prior_quality=EASY_PRIORS)
        cfg["store"]["url"] = store_url or f"sqlite:///{tmp}/shared.db"
        cfg["limits"] = {"redis_url": REDIS_URL, "prefix": prefix}
        gws.append(make_gateway(cfg))
    return gws[0], gws[1]


def live(gw: Any) -> LearnedPolicy:
    policy = gw.gateway.runtime.routes["smart"].policy
    assert isinstance(policy, LearnedPolicy)
    return policy


def router(gw: Any) -> LearnedRouting:
    r: LearnedRouting = gw.gateway.routing
    return r


def ask(gw: Any, text: str) -> httpx.Response:
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "smart", "messages": [{"role": "user",
                                                                                        "content": text}]}, timeout=10)
    assert r.status_code == 200, r.text
    return r


def rate(gw: Any, call_id: str, rating: int) -> None:
    r = httpx.post(gw.v1 + "/feedback", json={"call_id": call_id, "rating": rating}, timeout=10)
    assert r.status_code in (201, 202), r.text  # 202: the call is still on its way to the store


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_feedback_at_one_replica_reaches_the_policy_that_decides_on_every_replica(
        tmp_path: Path, prefix: str, store: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if store == "postgres" else None
    # the gateways start after (and stop before) the PostgreSQL schema they use is dropped
    a, b = replicas(request.getfixturevalue("make_gateway"), tmp_path, prefix, url)
    assert router(a).share is not None and router(b).share is not None
    r = ask(b, f"What is the {HARD} of x squared?")  # B routes it (and alone remembers its Features)
    call_id = r.headers["x-flywheel-call-id"]
    assert r.headers["x-flywheel-variant"] == "cheap"
    features = router(b)._memory[call_id].features
    before = live(a).predict(features)["cheap"]
    assert before == pytest.approx(live(b).predict(features)["cheap"])

    rate(a, call_id, -1)  # …but its feedback arrives at A, which never saw the call
    wait_for(lambda: live(b).updates == 1, what="B's policy to learn from feedback A received")
    wait_for(lambda: live(a).updates == 1, what="A's policy to learn B's update")
    assert router(a).stats.forwarded == 1 and router(b).stats.updates == 1 and router(a).stats.remote_updates == 1
    for gw in (a, b):
        assert live(gw).predict(features)["cheap"] < before
    assert live(a).predict(features) == pytest.approx(live(b).predict(features))

    # the decision changed on both replicas: A's too, though A never routed such a question
    for gw in (a, b):
        assert ask(gw, f"What is the {HARD} of x cubed?").headers["x-flywheel-variant"] == "strong"

    # ratings arriving anywhere about calls routed anywhere: both policies learn every one of them
    for i in range(6):
        served_by, rated_at = (a, b) if i % 2 else (b, a)
        r = ask(served_by, f"What is the {HARD} of x to the power {i}?")
        rate(rated_at, r.headers["x-flywheel-call-id"], 1)
    wait_for(lambda: live(a).updates == live(b).updates == 7, what="both policies to learn every rating")
    assert live(a).predict(features) == pytest.approx(live(b).predict(features))

    # what went through Redis: features and outcomes, never the question, the user or the key
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        entries: Any = client.xrange(f"{prefix}:routing:updates")
        client.delete(f"{prefix}:routing:updates")
    finally:
        client.close()
    kinds = [fields[b"k"] for _, fields in entries]
    assert kinds.count(b"f") >= 1 and kinds.count(b"u") == 7
    assert not any(HARD.encode() in v for _, fields in entries for v in fields.values())


def test_updates_stay_local_without_redis(make_gateway: Any, tmp_path: Path) -> None:
    """Without `[limits] redis_url` each replica learns only from feedback about calls it routed."""
    gws = []
    for name in ("a", "b"):
        cfg = routing_config(tmp_path / name, prior_quality=EASY_PRIORS)
        cfg["store"]["url"] = f"sqlite:///{tmp_path}/shared.db"
        gws.append(make_gateway(cfg))
    a, b = gws
    assert router(a).share is None
    call_id = ask(b, f"What is the {HARD} of x squared?").headers["x-flywheel-call-id"]
    rate(a, call_id, -1)
    wait_for(lambda: router(a).stats.unmatched == 1, what="A to see feedback about a call it does not know")
    assert live(a).updates == 0 and live(b).updates == 0 and router(a).stats.forwarded == 0
