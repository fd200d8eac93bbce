"""The learned router: per request, pick the variant that trades predicted quality against price.

Model: one Bayesian linear regression per variant (`policies.linear`) predicting quality in [0, 1]
from cheap features (`policies.featurise`: bias, log prompt length, has_tools and a fixed random
projection of the embedding). Costs are tracked as a decayed mean per variant, normalised by the
most expensive one so `cost_normalised` lies in [0, 1].

Rule, per request (p = clipped posterior mean, plus `ucb` x posterior std when `ucb` > 0):
- reward mode (`min_quality` None): argmax of p - cost_weight x cost_normalised;
- floor mode: the cheapest variant with p >= min_quality x (best predicted quality).
With probability `explore` the choice is uniform over the variants instead (epsilon-greedy). The
rule is deterministic given the state, so the logged propensity is exact:
P(greedy) = 1 - explore + explore/k and P(other) = explore/k (k = variants not over their cap).

Following drift: evidence decays by `decay` per update of a variant, and a drift alarm (an EWMA of
prediction residuals beyond `drift_alarm`) drops most of a variant's evidence when its outcomes move.

Admin controls: `pins` force a variant (they win over everything), `max_share` caps a variant's
share over the last `share_window` decisions (a capped variant is skipped), `frozen` ignores updates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from policies.base import Decision, Features, check_variants, make_order
from policies.controls import Pin, ShareWindow, as_pins
from policies.featurise import Featuriser
from policies.linear import LinearBank

FORMAT = 2
# format 1 had no memory coordinates: its state is widened with zero rows/columns at these
# positions (no evidence about them yet), which is exact for everything it did learn
_FORMAT1_NEW_COORDS = (3, 4, 5)
DEFAULT_PRIOR_QUALITY = 0.5  # "don't know" for variants without a configured prior
# drift detector: an EWMA of a variant's prediction residuals; ~20 observations of memory, so a
# real shift shows within a few dozen updates while Bernoulli noise (sd <= 0.5) averages out
_DRIFT_RATE = 0.05
_DRIFT_KEEP = 0.1  # share of a variant's evidence kept when its drift alarm fires
_DRIFT_MIN_WEIGHT = 50.0  # a model with less evidence than this is not "surprised" by anything
_STRUCTURAL = ("dims", "seed")  # changing these would make stored statistics meaningless


class LearnedPolicy:
    """A contextual-bandit router over a route's variants; see the module docstring.

    Settings (all plain values, JSON-safe, so a route's config table maps straight onto them):
    cost_weight: price weight in reward mode; min_quality: switches to floor mode (fraction of the
    best variant's predicted quality); explore: epsilon; ucb: optimism bonus in posterior stds
    (0 = none); decay: forgetting per update (0.001 ~ a 700-update half-life); drift_alarm: residual
    EWMA that triggers sharp forgetting (None = off); prior_quality: cold-start P(ok) per variant
    (default 0.5); prior_cost: relative prices in any unit, used until costs are observed;
    prior_strength: prior weight in pseudo-observations; noise: outcome noise sd; dims/seed: the
    embedding projection; pins, max_share, share_window, frozen: admin controls; quality_metric:
    which feedback the caller maps to quality (stored, not used here); rng: for exploration.
    """

    def __init__(
        self,
        variants: Sequence[str],
        *,
        fallbacks: Sequence[str] = (),
        cost_weight: float = 0.5,
        min_quality: float | None = None,
        explore: float = 0.05,
        ucb: float = 0.0,
        decay: float = 0.001,
        drift_alarm: float | None = 0.25,
        prior_quality: Mapping[str, float] | None = None,
        prior_cost: Mapping[str, float] | None = None,
        prior_strength: float = 2.0,
        noise: float = 0.5,
        dims: int = 32,
        seed: int = 0,
        pins: Sequence[Pin | Mapping[str, Any]] = (),
        max_share: Mapping[str, float] | None = None,
        share_window: int = 500,
        frozen: bool = False,
        quality_metric: str = "rating",
        rng: random.Random | None = None,
    ) -> None:
        self.variants = check_variants(variants, "learned policy")
        self._index = {v: i for i, v in enumerate(self.variants)}
        self.fallbacks = tuple(fallbacks)
        self.cost_weight = _check_range("cost_weight", cost_weight, 0.0, math.inf)
        self.min_quality = None if min_quality is None else _check_range("min_quality", min_quality, 0.0, 1.0)
        self.explore = _check_range("explore", explore, 0.0, 1.0)
        self.ucb = _check_range("ucb", ucb, 0.0, math.inf)
        self.decay = _check_range("decay", decay, 0.0, 0.5)
        self.drift_alarm = None if drift_alarm is None else _check_range("drift_alarm", drift_alarm, 0.0, 1.0)
        self.prior_quality = self._by_variant("prior_quality", prior_quality or {})
        self.prior_cost = self._by_variant("prior_cost", prior_cost or {})
        self.pins = as_pins(pins)
        for pin in self.pins:
            self._check_known("pins", pin.variant)
        self.max_share = self._by_variant("max_share", max_share or {})
        self.share_window = share_window
        self.frozen = frozen
        self.quality_metric = quality_metric
        self.updates = 0
        self._rng = rng if rng is not None else random.Random()
        self._gamma = 1.0 - self.decay
        self._features = Featuriser(dims, seed)
        priors = np.array([self.prior_quality.get(v, DEFAULT_PRIOR_QUALITY) for v in self.variants])
        self._bank = LinearBank(priors, self._features.size, prior_strength, noise)
        n = len(self.variants)
        self._cost_sum = [0.0] * n
        self._cost_n = [0.0] * n
        self._cost_norm = [0.0] * n
        self._cost_order = list(range(n))
        self._surprise = [0.0] * n  # EWMA of residuals per variant
        self._since_alarm = [0] * n  # updates since the EWMA was (re)started
        self.drift_alarms = [0] * n  # how often each variant's alarm fired (observability)
        self._refresh_costs()
        caps = [self.max_share.get(v) for v in self.variants]
        self._shares = ShareWindow(n, caps, share_window, 50) if self.max_share else None
        self._orders = [make_order(v, self.fallbacks) for v in self.variants]
        # buffers reused on every call: the hot path allocates as little as numpy allows
        self._x = np.empty(self._features.size)
        self._xu = np.empty(self._features.size)
        self._mean = np.empty(n)

    @property
    def dims(self) -> int:
        """Length of the embedding projection; 0 means the policy never looks at an embedding."""
        return self._features.dims

    # -- configuration helpers -------------------------------------------------------------

    def _check_known(self, what: str, variant: str) -> None:
        if variant not in self._index:
            raise ValueError(f"{what}: unknown variant {variant!r} (variants: {', '.join(self.variants)})")

    def _by_variant(self, what: str, values: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for v, value in values.items():
            self._check_known(what, v)
            out[v] = _check_range(f"{what}.{v}", value, 0.0, 1.0 if what != "prior_cost" else math.inf)
        return out

    def _refresh_costs(self) -> None:
        """Estimate each variant's cost; unseen variants borrow the scale of seen ones via prior_cost."""
        n = len(self.variants)
        seen = {i: self._cost_sum[i] / self._cost_n[i] for i in range(n) if self._cost_n[i] > 0.0}
        priors = {i: self.prior_cost[v] for i, v in enumerate(self.variants) if self.prior_cost.get(v, 0) > 0}
        ratios = [seen[i] / priors[i] for i in seen if i in priors]
        # prior_cost is relative (any unit): convert it to observed units when we can
        scale = sum(ratios) / len(ratios) if ratios else (1.0 if not seen else None)
        est: list[float | None] = [
            seen.get(i, priors[i] * scale if i in priors and scale is not None else None) for i in range(n)
        ]
        known = [c for c in est if c is not None]
        # an unknown cost is assumed as high as the dearest known one: no free lunch before evidence
        fill = max(known) if known else 0.0
        costs = [fill if c is None else c for c in est]
        top = max(costs)
        self._cost_norm = [c / top if top > 0.0 else 0.0 for c in costs]
        self._cost_order = sorted(range(n), key=lambda i: (self._cost_norm[i], i))

    # -- deciding --------------------------------------------------------------------------

    def _pin_for(self, f: Features) -> Pin | None:
        for pin in self.pins:
            if pin.matches(f):
                return pin
        return None

    def _greedy(self, f: Features, allowed: list[bool] | None) -> tuple[int, str]:
        """The best allowed variant under the configured rule, and the reason string."""
        x = self._features.vector(f, self._x)
        # clipping in Python: np.clip costs several µs of call overhead on a 2-element array
        mean = [
            0.0 if m < 0.0 else 1.0 if m > 1.0 else m for m in self._bank.predict_mean(x, self._mean).tolist()
        ]
        if self.ucb > 0.0:
            bonus = (self.ucb * self._bank.predict_std(x)).tolist()
            q = [m + b for m, b in zip(mean, bonus, strict=True)]
            shown = [f"{m:.2f}+{b:.2f}" for m, b in zip(mean, bonus, strict=True)]
        else:
            q = mean
            shown = [f"{m:.2f}" for m in mean]
        idx = [i for i in range(len(q)) if allowed is None or allowed[i]]
        names = self.variants
        if self.min_quality is not None:
            threshold = self.min_quality * max(mean[i] for i in idx)
            parts: list[str] = []
            for i in self._cost_order:
                if allowed is not None and not allowed[i]:
                    continue
                if q[i] >= threshold:
                    parts.append(f"p({names[i]} ok)={shown[i]} ≥ {threshold:.2f}")
                    return i, f"learned: {', '.join(parts)} → {names[i]}"
                parts.append(f"p({names[i]} ok)={shown[i]} < {threshold:.2f}")
            best = max(idx, key=lambda i: mean[i])  # unreachable while min_quality <= 1; kept for safety
            return best, f"learned: best p({names[best]} ok)={shown[best]} → {names[best]}"
        cw = self.cost_weight
        util = [q[i] - cw * self._cost_norm[i] for i in range(len(q))]
        ranked = sorted(idx, key=lambda i: -util[i])
        best = ranked[0]
        why = f"learned: p({names[best]} ok)={shown[best]}, utility {util[best]:.2f}"
        if len(ranked) > 1:
            second = ranked[1]
            why += f" > {names[second]} {util[second]:.2f}"
        return best, f"{why} → {names[best]}"

    def choose(self, f: Features) -> Decision:
        """Pick a variant for one request (pins, then caps, then explore-or-greedy)."""
        pin = self._pin_for(f) if self.pins else None
        if pin is not None:
            i = self._index[pin.variant]
            if self._shares is not None:
                self._shares.record(i)
            why = f"pinned by config: {', '.join(pin.conditions())} → {pin.variant}"
            return Decision(pin.variant, self._orders[i], why, 1.0)
        allowed = self._shares.allowed() if self._shares is not None else None
        greedy, reason = self._greedy(f, allowed)
        k = len(self.variants) if allowed is None else sum(allowed)
        eps = self.explore
        pick = greedy
        if eps > 0.0 and self._rng.random() < eps:
            candidates = [i for i in range(len(self.variants)) if allowed is None or allowed[i]]
            pick = candidates[int(self._rng.random() * k)]
            reason = f"learned: explore (ε={eps:.2f}) → {self.variants[pick]}"
        probability = eps / k + (1.0 - eps if pick == greedy else 0.0)
        if allowed is not None and k < len(allowed):
            capped = [self.variants[i] for i, ok in enumerate(allowed) if not ok]
            reason += f" (capped: {', '.join(capped)})"
        if self._shares is not None:
            self._shares.record(pick)
        return Decision(self.variants[pick], self._orders[pick], reason, probability)

    def action_probabilities(self, f: Features) -> dict[str, float]:
        """P(each variant | f) under the policy, ignoring share caps; changes no state."""
        pin = self._pin_for(f)
        if pin is not None:
            return {v: float(v == pin.variant) for v in self.variants}
        greedy, _ = self._greedy(f, None)
        k = len(self.variants)
        eps = self.explore
        return {v: eps / k + (1.0 - eps if i == greedy else 0.0) for i, v in enumerate(self.variants)}

    def predict(self, f: Features) -> dict[str, float]:
        """Posterior mean quality per variant for `f` (clipped to [0, 1]), e.g. for a dashboard."""
        x = self._features.vector(f)
        mean = np.clip(self._bank.mean @ x, 0.0, 1.0)
        return dict(zip(self.variants, mean.tolist(), strict=True))

    # -- learning --------------------------------------------------------------------------

    def update(self, f: Features, variant: str, quality: float, cost: float) -> bool:
        """Learn from one outcome: the request `f` went to `variant`, scored `quality`, cost `cost`.

        `quality` is in [0, 1] (e.g. rating 1 -> 1.0, -1 -> 0.0); `cost` is >= 0 in any fixed unit
        (USD per call). Returns False, learning nothing, when the policy is frozen.
        """
        if self.frozen:
            return False
        self._check_known("update", variant)
        _check_range("quality", quality, 0.0, 1.0)
        _check_range("cost", cost, 0.0, math.inf)
        i = self._index[variant]
        x = self._features.vector(f, self._xu)
        residual = self._bank.update(i, x, float(quality), self._gamma)
        if self.drift_alarm is not None:
            self._watch_drift(i, residual)
        self._cost_sum[i] = self._gamma * self._cost_sum[i] + float(cost)
        self._cost_n[i] = self._gamma * self._cost_n[i] + 1.0
        self._refresh_costs()
        self.updates += 1
        return True

    def _watch_drift(self, i: int, residual: float) -> None:
        """Forget most of variant i's evidence when its recent residuals are persistently one-sided.

        Exponential decay alone trades stability for speed: a window long enough for precise
        estimates takes hundreds of requests to notice a model that got worse. The alarm lets
        `decay` stay slow in calm periods while a real shift is followed within a few dozen updates.
        """
        s = (1.0 - _DRIFT_RATE) * self._surprise[i] + _DRIFT_RATE * residual
        self._surprise[i] = s
        self._since_alarm[i] += 1
        assert self.drift_alarm is not None
        if (
            abs(s) > self.drift_alarm
            and self._since_alarm[i] * _DRIFT_RATE >= 1.0
            and self._bank.weight[i] >= _DRIFT_MIN_WEIGHT
        ):
            self._bank.forget(i, _DRIFT_KEEP)
            self._surprise[i] = 0.0
            self._since_alarm[i] = 0
            self.drift_alarms[i] += 1

    # -- serialisation ---------------------------------------------------------------------

    def to_params(self) -> dict[str, Any]:
        """JSON-safe parameters (config + learned state) from which `from_params` rebuilds the policy."""
        bank = self._bank
        return {
            "kind": "learned",
            "format": FORMAT,
            "variants": list(self.variants),
            "fallbacks": list(self.fallbacks),
            "cost_weight": self.cost_weight,
            "min_quality": self.min_quality,
            "explore": self.explore,
            "ucb": self.ucb,
            "decay": self.decay,
            "drift_alarm": self.drift_alarm,
            "prior_quality": dict(self.prior_quality),
            "prior_cost": dict(self.prior_cost),
            "prior_strength": bank.lam,
            "noise": bank.noise,
            "dims": self._features.dims,
            "seed": self._features.seed,
            "pins": [p.to_dict() for p in self.pins],
            "max_share": dict(self.max_share),
            "share_window": self.share_window,
            "frozen": self.frozen,
            "quality_metric": self.quality_metric,
            "state": {
                v: {
                    "data_precision": bank.data_precision[i].tolist(),
                    "data_target": bank.data_target[i].tolist(),
                    "weight": float(bank.weight[i]),
                    "cost_sum": self._cost_sum[i],
                    "cost_n": self._cost_n[i],
                    "surprise": self._surprise[i],
                    "since_alarm": self._since_alarm[i],
                    "drift_alarms": self.drift_alarms[i],
                }
                for i, v in enumerate(self.variants)
            },
            "updates": self.updates,
        }

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], *, rng: random.Random | None = None, **overrides: Any
    ) -> LearnedPolicy:
        """Rebuild a policy from `to_params()` output.

        `overrides` replace configuration (e.g. the admin's current `pins`, `max_share`, `frozen`,
        `variants`). Learned state is kept for variants that still exist; new variants start at
        their prior. `dims` and `seed` cannot be overridden.
        """
        p = dict(params)
        if p.pop("kind", "learned") != "learned":
            raise ValueError(f"not a learned policy: kind={params.get('kind')!r}")
        fmt = p.pop("format", None)
        if fmt not in (1, FORMAT):
            raise ValueError(f"unsupported learned policy format {params.get('format')!r}, expected {FORMAT}")
        state: Mapping[str, Mapping[str, Any]] = p.pop("state")
        updates = int(p.pop("updates", 0))
        for key in _STRUCTURAL:
            if key in overrides and overrides[key] != p.get(key):
                raise ValueError(f"{key} cannot be overridden: the stored state depends on it")
        if "variants" in overrides:
            # stored per-variant settings of variants that no longer exist are dropped, not errors
            keep = set(overrides["variants"])
            for key in ("prior_quality", "prior_cost", "max_share"):
                if key not in overrides:
                    p[key] = {v: x for v, x in p.get(key, {}).items() if v in keep}
            if "pins" not in overrides:
                p["pins"] = [pin for pin in p.get("pins", []) if pin["variant"] in keep]
        p.update(overrides)
        policy = cls(**p, rng=rng)
        bank = policy._bank
        size = bank.size
        for i, v in enumerate(policy.variants):
            s = state.get(v)
            if s is None:
                continue
            prec = np.asarray(s["data_precision"], dtype=np.float64)
            target = np.asarray(s["data_target"], dtype=np.float64)
            if fmt == 1:
                prec, target = _widen_format1(prec, target)
            if prec.shape != (size, size) or target.shape != (size,):
                raise ValueError(f"state for {v!r} has the wrong shape for dims={policy._features.dims}")
            bank.data_precision[i] = prec
            bank.data_target[i] = target
            bank.weight[i] = float(s["weight"])
            bank.refresh(i)
            policy._cost_sum[i] = float(s["cost_sum"])
            policy._cost_n[i] = float(s["cost_n"])
            policy._surprise[i] = float(s.get("surprise", 0.0))
            policy._since_alarm[i] = int(s.get("since_alarm", 0))
            policy.drift_alarms[i] = int(s.get("drift_alarms", 0))
        policy._refresh_costs()
        policy.updates = updates
        return policy


def _widen_format1(precision: npt.NDArray[np.float64], target: npt.NDArray[np.float64]) -> tuple[
    npt.NDArray[np.float64], npt.NDArray[np.float64]
]:
    """A format-1 state's statistics with zero evidence inserted for the memory coordinates."""
    for i in _FORMAT1_NEW_COORDS:
        precision = np.insert(np.insert(precision, i, 0.0, axis=0), i, 0.0, axis=1)
        target = np.insert(target, i, 0.0)
    return precision, target


def _check_range(name: str, value: float, lo: float, hi: float) -> float:
    """`value` as a float if lo <= value <= hi (and not NaN), else ValueError naming it."""
    v = float(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be within [{lo}, {hi}], got {value!r}")
    return v
