"""The learned router: convergence, drift, admin controls, propensities, serialisation."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from policies import Features, LearnedPolicy, Pin, summarise_change
from policies.featurise import Featuriser, memory_agreement, projection_matrix

DIM = 16
CHEAP, STRONG = "cheap", "strong"
COST = {CHEAP: 1.0, STRONG: 20.0}


class Task:
    """Easy and hard requests in separate embedding clusters; the cheap model fails the hard ones."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        centres = self.rng.standard_normal((4, DIM))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.p_ok = {CHEAP: [0.95, 0.1], STRONG: [0.95, 0.95]}  # [easy, hard]

    def request(self, hard: bool, user: str | None = None) -> Features:
        c = self.centres[2 + int(self.rng.integers(2)) if hard else int(self.rng.integers(2))]
        e = c + self.rng.standard_normal(DIM) * 0.05
        chars = int(self.rng.integers(200, 2000))
        return Features("r", user, None, chars, 1, bool(self.rng.random() < 0.2), e.astype(np.float32))

    def outcome(self, variant: str, hard: bool) -> float:
        return 1.0 if self.rng.random() < self.p_ok[variant][int(hard)] else 0.0

    def serve(self, policy: LearnedPolicy, n: int) -> list[str]:
        """Online loop with immediate feedback; returns the variants chosen."""
        chosen = []
        for _ in range(n):
            hard = bool(self.rng.random() < 0.4)
            f = self.request(hard)
            v = policy.choose(f).variant
            policy.update(f, v, self.outcome(v, hard), COST[v])
            chosen.append(v)
        return chosen


def make(**kw: object) -> LearnedPolicy:
    params: dict[str, object] = {
        "min_quality": 0.75,
        "explore": 0.1,
        "prior_quality": {STRONG: 0.9, CHEAP: 0.6},
        "prior_cost": COST,
        "dims": 8,
        "rng": random.Random(1),
    }
    params.update(kw)
    return LearnedPolicy([CHEAP, STRONG], fallbacks=[STRONG], **params)  # type: ignore[arg-type]


def greedy_share(policy: LearnedPolicy, task: Task, hard: bool, n: int = 100) -> float:
    """Share of requests of one kind routed to the cheap model, exploration off."""
    explore, policy.explore = policy.explore, 0.0
    try:
        return sum(policy.choose(task.request(hard)).variant == CHEAP for _ in range(n)) / n
    finally:
        policy.explore = explore


@pytest.fixture(scope="module")
def trained_params() -> dict[str, object]:
    policy = make()
    Task(0).serve(policy, 1500)
    return policy.to_params()


@pytest.fixture
def trained(trained_params: dict[str, object]) -> tuple[LearnedPolicy, Task]:
    """A fresh copy of the trained policy per test (tests mutate it), with a task of the same world."""
    return LearnedPolicy.from_params(trained_params, rng=random.Random(1)), Task(0)


def test_cold_start_follows_the_priors() -> None:
    task = Task(0)
    policy = make(explore=0.0)
    d = policy.choose(task.request(hard=False))
    assert d.variant == STRONG  # cheap's prior 0.6 < 0.75 x 0.9
    assert d.order == (STRONG,)
    assert d.probability == 1.0
    assert d.reason == "learned: p(cheap ok)=0.60 < 0.68, p(strong ok)=0.90 ≥ 0.68 → strong"


def test_converges_cheap_for_easy_strong_for_hard(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, task = trained
    assert greedy_share(policy, task, hard=False) >= 0.95
    assert greedy_share(policy, task, hard=True) <= 0.05
    policy.explore = 0.0
    d = policy.choose(task.request(hard=False))
    policy.explore = 0.1
    assert re.fullmatch(r"learned: p\(cheap ok\)=0\.\d\d ≥ 0\.\d\d → cheap", d.reason), d.reason
    assert d.order == (CHEAP, STRONG)
    pred = policy.predict(task.request(hard=True))
    assert pred[STRONG] > 0.8 > 0.4 > pred[CHEAP]


def test_reward_mode_trades_quality_for_cost() -> None:
    task = Task(1)
    policy = make(min_quality=None, cost_weight=0.5)
    task.serve(policy, 1500)
    assert greedy_share(policy, task, hard=False) >= 0.95
    assert greedy_share(policy, task, hard=True) <= 0.05
    policy.explore = 0.0
    assert "utility" in policy.choose(task.request(hard=True)).reason
    # with price weighted heavily enough, even a bad cheap answer wins
    policy.cost_weight = 5.0
    assert greedy_share(policy, task, hard=True) == 1.0


def test_decision_probability_is_the_exact_propensity(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, task = trained
    f = task.request(hard=False)
    probs = policy.action_probabilities(f)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs == {CHEAP: pytest.approx(0.95), STRONG: pytest.approx(0.05)}
    decisions = [policy.choose(f) for _ in range(4000)]
    for d in decisions[:50]:
        assert d.probability == pytest.approx(probs[d.variant])
    explored = [d for d in decisions if "explore" in d.reason]
    assert len(explored) / len(decisions) == pytest.approx(0.1, abs=0.02)
    share = sum(d.variant == CHEAP for d in decisions) / len(decisions)
    assert share == pytest.approx(0.95, abs=0.015)


def test_drift_alarm_moves_traffic_back_quickly() -> None:
    task = Task(2)
    policy = make()
    task.serve(policy, 1500)
    assert greedy_share(policy, task, hard=False) >= 0.95
    task.p_ok[CHEAP][0] = 0.2  # the cheap model degrades on easy requests
    task.serve(policy, 150)
    assert greedy_share(policy, task, hard=False) <= 0.05
    assert policy.drift_alarms[0] >= 1


def test_decay_lets_it_follow_drift_without_the_alarm() -> None:
    shares = {}
    for decay in (0.0, 0.01):
        task = Task(3)
        policy = make(decay=decay, drift_alarm=None)
        task.serve(policy, 1500)
        assert greedy_share(policy, task, hard=False) >= 0.95
        task.p_ok[CHEAP][0] = 0.2
        task.serve(policy, 400)
        shares[decay] = greedy_share(policy, task, hard=False)
        assert policy.drift_alarms == [0, 0]
    assert shares[0.01] <= 0.05  # forgetting: the new evidence dominates
    assert shares[0.0] >= 0.5  # without it, 1,500 old requests outvote 400 new ones


def test_no_false_drift_alarms_when_stationary(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, _ = trained
    assert policy.drift_alarms == [0, 0]


def test_pins_win_over_the_model(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, task = trained
    params = policy.to_params()
    pins = [
        Pin(STRONG, user="vip"),
        {"variant": CHEAP, "key_id": "batch-jobs"},
        {"variant": STRONG, "has_tools": True, "min_prompt_chars": 1000},
        Pin(CHEAP, user="vip"),  # shadowed: the first matching pin wins
    ]
    pinned = LearnedPolicy.from_params(params, pins=pins, explore=0.5)
    d = pinned.choose(task.request(hard=False, user="vip"))
    assert (d.variant, d.probability) == (STRONG, 1.0)
    assert d.reason == "pinned by config: user=vip → strong"
    hard = task.request(hard=True)
    by_key = Features(hard.route, None, "batch-jobs", 10, 1, False, hard.embedding)
    assert pinned.choose(by_key).variant == CHEAP
    seg = Features("r", None, None, 5000, 3, True, task.request(hard=False).embedding)
    d = pinned.choose(seg)
    assert d.variant == STRONG and d.reason == "pinned by config: has_tools, prompt_chars≥1000 → strong"
    assert pinned.action_probabilities(seg) == {CHEAP: 0.0, STRONG: 1.0}


def test_pin_validation() -> None:
    with pytest.raises(ValueError, match="no condition"):
        Pin(STRONG)
    with pytest.raises(ValueError, match="pins: unknown variant 'huge'"):
        make(pins=[Pin("huge", user="x")])


def test_max_share_caps_a_variant_over_the_window() -> None:
    task = Task(4)
    # cheap looks best everywhere at cold start, so without a cap it would take all traffic
    policy = make(
        prior_quality={CHEAP: 0.95, STRONG: 0.9}, explore=0.0, max_share={CHEAP: 0.6}, share_window=100
    )
    decisions = [policy.choose(task.request(hard=False)) for _ in range(1000)]
    assert all(d.variant == CHEAP for d in decisions[:50])  # caps wait for min_samples decisions
    for end in range(200, 1001, 50):
        window = decisions[end - 100 : end]
        assert sum(d.variant == CHEAP for d in window) <= 60
    capped = [d for d in decisions if d.variant == STRONG]
    assert capped and all(d.reason.endswith("(capped: cheap)") for d in capped)
    assert all(d.probability == 1.0 for d in capped)  # only one variant was allowed
    assert "capped" not in make(explore=0.0).choose(task.request(hard=False)).reason


def test_frozen_ignores_updates(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, task = trained
    frozen = LearnedPolicy.from_params(policy.to_params(), frozen=True)
    f = task.request(hard=False)
    before = frozen.predict(f)
    assert frozen.update(f, CHEAP, 0.0, 1.0) is False
    assert frozen.predict(f) == before and frozen.updates == policy.updates


def test_update_validates_its_input() -> None:
    policy = make()
    f = Task(0).request(hard=False)
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        policy.update(f, "huge", 1.0, 1.0)
    with pytest.raises(ValueError, match="quality"):
        policy.update(f, CHEAP, 1.5, 1.0)
    with pytest.raises(ValueError, match="quality"):
        policy.update(f, CHEAP, float("nan"), 1.0)
    with pytest.raises(ValueError, match="cost"):
        policy.update(f, CHEAP, 1.0, -1.0)
    assert policy.updates == 0


def test_round_trip_through_json_gives_identical_decisions() -> None:
    task = Task(5)
    policy = make(rng=random.Random(5))
    task.serve(policy, 600)
    params = json.loads(json.dumps(policy.to_params()))
    copy = LearnedPolicy.from_params(params, rng=random.Random(99))
    policy._rng = random.Random(99)  # same exploration draws from here on
    feats = [task.request(hard=bool(i % 2)) for i in range(300)]
    assert [policy.choose(f) for f in feats] == [copy.choose(f) for f in feats]
    # and they keep learning identically (drift detector state included)
    for i, f in enumerate(feats[:100]):
        v = CHEAP if i % 3 else STRONG
        policy.update(f, v, float(i % 2), COST[v])
        copy.update(f, v, float(i % 2), COST[v])
    assert [policy.choose(f) for f in feats] == [copy.choose(f) for f in feats]
    assert copy.to_params() == policy.to_params()


def test_from_params_rejects_bad_input_and_adds_variants(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, task = trained
    params = policy.to_params()
    with pytest.raises(ValueError, match="format"):
        LearnedPolicy.from_params({**params, "format": 99})
    with pytest.raises(ValueError, match="dims cannot be overridden"):
        LearnedPolicy.from_params(params, dims=4)
    priors = {CHEAP: 0.6, STRONG: 0.9, "new": 0.3}  # an override replaces the stored setting whole
    grown = LearnedPolicy.from_params(params, variants=[CHEAP, STRONG, "new"], prior_quality=priors)
    f = task.request(hard=True)
    assert grown.predict(f)[CHEAP] == policy.predict(f)[CHEAP]
    assert grown.predict(f)["new"] == pytest.approx(0.3, abs=0.05)
    shrunk = LearnedPolicy.from_params(params, variants=[STRONG])
    assert shrunk.choose(f).variant == STRONG


def test_summarise_change(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, task = trained
    sample = [task.request(hard=bool(i % 3 == 0)) for i in range(90)]
    fresh = make()
    text = summarise_change(fresh, policy, sample)
    # untrained: everything to strong but exploration (5% cheap); trained: 2/3 of requests are easy
    assert text.startswith("share to cheap 5% → 6"), text
    assert "strong 95% → 3" in text and "+1500 updates" in text
    assert summarise_change(policy, policy, sample) == "no change in traffic shares over 90 requests"
    tweaked = LearnedPolicy.from_params(policy.to_params(), cost_weight=0.3, frozen=True)
    assert summarise_change(policy, tweaked, sample).endswith("; cost_weight 0.5 → 0.3; frozen False → True")


def test_costs_come_from_prior_then_observations() -> None:
    policy = make()
    assert policy._cost_norm == [pytest.approx(0.05), 1.0]
    f = Task(0).request(hard=False)
    # observed in USD: strong's estimate is scaled from cheap's observed/prior ratio until seen
    policy.update(f, CHEAP, 1.0, 0.002)
    assert policy._cost_norm == [pytest.approx(0.05), 1.0]
    policy.update(f, STRONG, 1.0, 0.01)
    assert policy._cost_norm == [pytest.approx(0.2), 1.0]
    unpriced = LearnedPolicy([CHEAP, STRONG])
    assert unpriced._cost_norm == [0.0, 0.0]
    unpriced.update(f, CHEAP, 1.0, 0.5)
    assert unpriced._cost_norm == [1.0, 1.0]  # unknown cost: assumed as dear as the dearest known


def test_featuriser_is_deterministic_and_scale_free() -> None:
    assert np.array_equal(projection_matrix(4, 10, seed=3), projection_matrix(4, 10, seed=3))
    assert not np.array_equal(projection_matrix(4, 10, seed=3), projection_matrix(4, 10, seed=4))
    fz = Featuriser(dims=4)
    e = np.arange(1, 11, dtype=np.float64)
    a = fz.vector(Features("r", None, None, 403, 1, True, e))
    b = fz.vector(Features("r", None, None, 403, 1, True, e * 10))
    c = fz.vector(Features("r", None, None, 403, 1, True, e.astype(np.float32)))
    assert np.allclose(a, b) and np.allclose(a, c, atol=1e-6)
    assert a[0] == 1.0 and a[1] == pytest.approx(0.0, abs=0.01) and a[2] == 1.0
    none = fz.vector(Features("r", None, None, 403, 1, False, None))
    assert none[3:].tolist() == [0.0] * 7  # no memory, no embedding
    remembered = fz.vector(Features("r", None, None, 403, 1, False, None, memory_score=0.8, memory_agreement=0.5))
    assert remembered[3:6].tolist() == pytest.approx([0.8, 0.5, 0.4])


@pytest.mark.parametrize(
    "kw",
    [{"explore": 1.5}, {"min_quality": 2.0}, {"prior_quality": {"huge": 0.5}}, {"max_share": {CHEAP: 2}}],
)
def test_constructor_rejects_bad_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make(**kw)


def test_memory_agreement_counts_answers_equal_to_the_nearest() -> None:
    assert memory_agreement([]) == 0.0
    assert memory_agreement(["PlayMusic", " playmusic ", "GetWeather", "PlayMusic"]) == 0.75
    assert memory_agreement(["a"]) == 1.0


def test_memory_decides_where_the_embedding_cannot() -> None:
    # Requests look alike (no embedding signal); the cheap model is right exactly when close,
    # agreeing examples were retrieved. The router must learn to send only those to cheap.
    rng = random.Random(3)
    policy = make(dims=0, explore=0.2)

    def request(remembered: bool) -> Features:
        score, agree = (rng.uniform(0.8, 1.0), 1.0) if remembered else (rng.uniform(0.2, 0.6), 0.4)
        return Features("r", None, None, 300, 1, False, None, memory_score=score, memory_agreement=agree)

    for _ in range(600):
        remembered = rng.random() < 0.6
        f = request(remembered)
        v = policy.choose(f).variant
        ok = remembered or v == STRONG
        policy.update(f, v, 1.0 if ok else 0.0, COST[v])
    policy.explore = 0.0
    assert all(policy.choose(request(True)).variant == CHEAP for _ in range(50))
    assert all(policy.choose(request(False)).variant == STRONG for _ in range(50))


def test_format_1_state_loads_with_no_evidence_about_memory(trained: tuple[LearnedPolicy, Task]) -> None:
    policy, task = trained
    params = json.loads(json.dumps(policy.to_params()))
    params["format"] = 1  # what a policy stored before the memory coordinates looked like
    for s in params["state"].values():
        s["data_precision"] = np.delete(np.delete(s["data_precision"], [3, 4, 5], 0), [3, 4, 5], 1).tolist()
        s["data_target"] = np.delete(s["data_target"], [3, 4, 5]).tolist()
    restored = LearnedPolicy.from_params(params, rng=random.Random(1))
    for hard in (False, True) * 5:
        f = task.request(hard)
        assert restored.predict(f) == pytest.approx(policy.predict(f), abs=0.05)
    with pytest.raises(ValueError, match="format"):
        LearnedPolicy.from_params({**params, "format": 9})
