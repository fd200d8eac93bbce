"""Static, fallback and weighted policies, the shared helpers, and the factory."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from policies import (
    FallbackPolicy,
    Features,
    LearnedPolicy,
    StaticPolicy,
    WeightedPolicy,
    build_policy,
    make_order,
)
from policies.base import Decision, LearningPolicy, Policy, check_variants


def feat(user: str | None = None, key: str | None = None, route: str = "support-bot") -> Features:
    return Features(route=route, user=user, key_id=key, prompt_chars=100, n_messages=1, has_tools=False)


def test_make_order_puts_chosen_first_and_dedups() -> None:
    assert make_order("b", ["a", "b", "c", "a"]) == ("b", "a", "c")
    assert make_order("a", []) == ("a",)


def test_check_variants_rejects_empty_and_duplicates() -> None:
    with pytest.raises(ValueError, match="at least one"):
        check_variants([])
    with pytest.raises(ValueError, match="duplicate variant"):
        check_variants(["a", "b", "a"])


def test_features_with_embedding_are_comparable_by_identity() -> None:
    f = Features("r", None, None, 1, 1, False, np.ones(4, dtype=np.float32))
    assert f == f  # would raise "truth value of an array is ambiguous" with generated __eq__
    assert f != Features("r", None, None, 1, 1, False, np.ones(4, dtype=np.float32))


def test_static_always_same_variant_with_fallbacks() -> None:
    p = StaticPolicy("small", fallbacks=["large", "small", "tiny"])
    d = p.choose(feat("u1"))
    assert d == Decision("small", ("small", "large", "tiny"), "static: small", 1.0)
    assert p.choose(feat()) == d
    assert isinstance(p, Policy)


def test_fallback_chain_order() -> None:
    p = FallbackPolicy(["primary", "backup", "last"], fallbacks=["backup", "extra"])
    d = p.choose(feat())
    assert d.variant == "primary"
    assert d.order == ("primary", "backup", "last", "extra")
    assert d.probability == 1.0
    assert d.reason == "fallback: primary (then backup, last, extra)"


def test_weighted_sticky_per_user_across_instances() -> None:
    w = {"small": 0.5, "large": 0.5}
    a, b = WeightedPolicy(w, rng=random.Random(1)), WeightedPolicy(w, rng=random.Random(2))
    for i in range(200):
        first = a.choose(feat(f"user{i}")).variant
        assert all(a.choose(feat(f"user{i}")).variant == first for _ in range(5))
        assert b.choose(feat(f"user{i}")).variant == first  # a hash, not process state
    assert "sticky user" in a.choose(feat("user1")).reason


def test_weighted_sticky_per_key_when_no_user_and_user_wins() -> None:
    p = WeightedPolicy({"small": 1, "large": 1})
    by_key = {p.choose(feat(key="team-a")).variant for _ in range(20)}
    assert len(by_key) == 1
    assert "sticky key" in p.choose(feat(key="team-a")).reason
    assert "sticky user" in p.choose(feat(user="u", key="team-a")).reason


def test_weighted_assignment_depends_on_route_and_salt() -> None:
    p, salted = WeightedPolicy({"a": 1, "b": 1}), WeightedPolicy({"a": 1, "b": 1}, salt="exp2")
    users = [f"u{i}" for i in range(200)]
    base = [p.choose(feat(u)).variant for u in users]
    assert base != [p.choose(feat(u, route="other")).variant for u in users]
    assert base != [salted.choose(feat(u)).variant for u in users]


def test_weighted_distribution_anonymous_10k_seeded() -> None:
    p = WeightedPolicy({"small": 0.7, "medium": 0.2, "large": 0.1}, rng=random.Random(42))
    counts = Counter(p.choose(feat()).variant for _ in range(10_000))
    # binomial sd at n=10k is <= 0.5 points; 1.5 points is > 3 sd
    assert counts["small"] / 10_000 == pytest.approx(0.7, abs=0.015)
    assert counts["medium"] / 10_000 == pytest.approx(0.2, abs=0.015)
    assert counts["large"] / 10_000 == pytest.approx(0.1, abs=0.015)
    d = p.choose(feat())
    assert d.reason.endswith("(random)")
    assert d.probability == pytest.approx({"small": 0.7, "medium": 0.2, "large": 0.1}[d.variant])


def test_weighted_distribution_over_10k_users() -> None:
    p = WeightedPolicy({"small": 9, "large": 1})
    counts = Counter(p.choose(feat(f"user-{i}")).variant for i in range(10_000))
    assert counts["small"] / 10_000 == pytest.approx(0.9, abs=0.015)
    assert p.choose(feat("x")).reason in (
        "weighted: small 90% (sticky user)",
        "weighted: large 10% (sticky user)",
    )


def test_weighted_seeded_rng_is_reproducible_and_zero_weight_never_drawn() -> None:
    w = {"off": 0.0, "a": 1.0, "b": 1.0, "off2": 0.0}
    p1, p2 = WeightedPolicy(w, rng=random.Random(7)), WeightedPolicy(w, rng=random.Random(7))
    seq1 = [p1.choose(feat()).variant for _ in range(500)]
    assert seq1 == [p2.choose(feat()).variant for _ in range(500)]
    assert set(seq1) == {"a", "b"}
    assert {p1.choose(feat(f"u{i}")).variant for i in range(500)} == {"a", "b"}


def test_weighted_not_sticky_ignores_user() -> None:
    p = WeightedPolicy({"a": 1, "b": 1}, sticky=False, rng=random.Random(3))
    assert {p.choose(feat("same-user")).variant for _ in range(100)} == {"a", "b"}


@pytest.mark.parametrize("weights", [{}, {"a": 0.0}, {"a": -1.0, "b": 2.0}, {"a": float("nan")}])
def test_weighted_rejects_bad_weights(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WeightedPolicy(weights)


def test_weighted_order_has_fallbacks() -> None:
    d = WeightedPolicy({"a": 1}, fallbacks=["b", "a"]).choose(feat("u"))
    assert d.order == ("a", "b")


def test_build_policy_kinds_and_defaults() -> None:
    s = build_policy("static", variants=["small", "large"], fallbacks=["large"])
    assert s.choose(feat()).order == ("small", "large")
    assert build_policy("static", variant="large").choose(feat()).variant == "large"
    w = build_policy("weighted", variants=["a", "b"], rng=random.Random(0))
    assert isinstance(w, WeightedPolicy) and w.shares == (0.5, 0.5)
    f = build_policy("fallback", variants=["a", "b"])
    assert f.choose(feat()).order == ("a", "b")
    learned = build_policy(
        "learned",
        variants=["a", "b"],
        explore=0.1,
        pins=[{"variant": "b", "user": "vip"}],
        quality_metric="score",
    )
    assert isinstance(learned, LearnedPolicy) and isinstance(learned, LearningPolicy)
    assert learned.choose(feat("vip")).variant == "b"


def test_build_policy_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown policy kind 'bandit'"):
        build_policy("bandit", variants=["a"])
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) colour"):
        build_policy("static", variants=["a"], colour="red")
    with pytest.raises(ValueError, match=r"unknown variant\(s\) c"):
        build_policy("weighted", variants=["a", "b"], weights={"a": 1, "c": 1})
    with pytest.raises(ValueError, match="variant"):
        build_policy("static")
