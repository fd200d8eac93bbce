"""The pure parts: feedback -> quality, a learned policy table -> policy, carrying state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from gateway.capture.quality import call_quality, feedback_quality
from gateway.config.settings import ConfigError, parse_settings
from gateway.serve.route_policy import build_route_policy, online_learning, policy_params
from gateway.serve.runtime import build_runtime
from gateway.store.records import FeedbackRecord
from policies import Features, LearnedPolicy
from policies.carry import carry_state
from tests.routing.conftest import routing_config


def fb(**kw: object) -> FeedbackRecord:
    return FeedbackRecord("c1", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("row", "metric", "quality"),
    [
        (fb(rating=1), "rating", 1.0), (fb(rating=-1), "rating", 0.0), (fb(score=0.7), "rating", None),
        (fb(correction="x"), "rating", 0.0), (fb(signal="used"), "rating", None),
        (fb(score=0.7, rating=-1), "score", 0.7), (fb(rating=1), "score", 1.0), (fb(signal="copied"), "score", None),
        (fb(signal="used"), "signals", 1.0), (fb(signal="edited"), "signals", 0.5),
        (fb(signal="regenerated"), "signals", 0.0), (fb(rating=1), "signals", None),
        (fb(rating=-1, score=0.9), "any", 0.0), (fb(score=0.9, signal="abandoned"), "any", 0.9),
        (fb(signal="rephrased"), "any", 0.0), (fb(comment="meh"), "any", None),
    ],
)
def test_feedback_quality(row: FeedbackRecord, metric: str, quality: float | None) -> None:
    assert feedback_quality(row, metric) == quality


def test_the_newest_row_that_says_something_wins() -> None:
    rows = [fb(rating=-1, created_at=1.0), fb(rating=1, created_at=2.0), fb(comment="ok", created_at=3.0)]
    assert call_quality(rows, "rating") == 1.0
    assert call_quality(rows[::-1], "rating") == 1.0  # order of the rows does not matter, time does
    assert call_quality([], "any") is None
    with pytest.raises(ValueError, match="quality_metric"):
        feedback_quality(fb(rating=1), "stars")


def test_policy_table() -> None:
    params = policy_params({"unrated": "ok", "unrated_after_s": 60, "replays": 8,
                            "pins": {"user:ann": "a", "key:vip": "b", "bob": "a"}}, learn=False)
    assert params == {"pins": [{"variant": "a", "user": "ann"}, {"variant": "b", "key_id": "vip"},
                               {"variant": "a", "user": "bob"}], "frozen": True}
    assert online_learning({"unrated": "ok", "unrated_after_s": 60}).unrated_after_s == 60.0
    assert online_learning({}).unrated == "ignore" and online_learning({}).replays == 0
    assert online_learning({"replays": 8}).replays == 8
    for bad in ({"unrated": "maybe"}, {"unrated_after_s": -1}, {"unrated_after_s": True}, {"replays": -1},
                {"replays": 2.5}, {"replays": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            online_learning(bad)
    with pytest.raises(ValueError, match="pins"):
        policy_params({"pins": {"group:x": "a"}})
    with pytest.raises(ValueError, match="quality_metric"):
        build_route_policy("r", "learned", {"quality_metric": "stars"}, variants=["a"], fallbacks=[])
    with pytest.raises(ValueError, match="unknown parameter"):
        build_route_policy("r", "static", {"unrated": "ok"}, variants=["a"], fallbacks=[])


def trained(dims: int = 8, seed: int = 0) -> LearnedPolicy:
    p = LearnedPolicy(["a", "b"], dims=dims, seed=seed, rng=random.Random(0))
    rng = np.random.default_rng(0)
    for _ in range(50):
        f = Features("r", None, None, 100, 1, False, rng.standard_normal(16))
        p.update(f, "a", 1.0, 0.001)
        p.update(f, "b", 0.0, 0.02)
    return p


def test_carry_state_keeps_learning_and_takes_new_config() -> None:
    old = trained()
    new = build_route_policy("r", "learned", {"dims": 8, "explore": 0.3, "pins": [{"variant": "b", "user": "x"}]},
                             variants=["a", "b", "c"], fallbacks=[], previous=old)
    assert isinstance(new, LearnedPolicy)
    f = Features("r", None, None, 100, 1, False, np.ones(16))
    assert new.updates == 100 and new.explore == 0.3 and new.pins[0].user == "x"
    assert new.predict(f)["a"] == pytest.approx(old.predict(f)["a"]) and new.predict(f)["c"] == 0.5  # new: prior
    assert carry_state(old, LearnedPolicy(["a", "b"], dims=4)) == ()  # other projection: nothing carried
    fresh = build_route_policy("r", "learned", {"dims": 4}, variants=["a", "b"], fallbacks=[], previous=old)
    assert isinstance(fresh, LearnedPolicy) and fresh.updates == 0


def test_a_bad_policy_table_is_a_config_error_naming_the_route(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, unrated="sometimes")
    with pytest.raises(ConfigError, match=r"routes\.smart\.policy: unrated"):
        build_runtime(parse_settings(cfg))
