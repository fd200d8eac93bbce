"""The weighted policy: split traffic by weights, sticky per user (or per key).

A known user always lands on the same variant while the weights are unchanged: the variant is
read off a stable hash of route + user mapped onto the cumulative weights. Requests without a
user fall back to the key; anonymous requests (neither) are drawn at random.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Mapping, Sequence

from policies.base import Decision, Features, check_variants, make_order

_SCALE = float(1 << 64)


def stable_unit(*parts: str) -> float:
    """A number in [0, 1) that depends only on `parts`: stable across processes and versions."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") / _SCALE


class WeightedPolicy:
    """Chooses a variant with probability proportional to its weight.

    `sticky=True` hashes the user (else the key id) so one subject keeps its variant; change
    `salt` to reshuffle every subject's assignment without touching the weights.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        fallbacks: Sequence[str] = (),
        *,
        sticky: bool = True,
        salt: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.variants = check_variants(weights.keys(), "weighted policy")
        values = [float(weights[v]) for v in self.variants]
        if any(not w >= 0.0 or w == float("inf") for w in values):  # `not >=` also catches NaN
            raise ValueError(f"weighted policy: weights must be finite and >= 0, got {dict(weights)}")
        total = sum(values)
        if total <= 0.0:
            raise ValueError("weighted policy: at least one weight must be > 0")
        self.shares = tuple(w / total for w in values)
        self.fallbacks = tuple(fallbacks)
        self.sticky = sticky
        self.salt = salt
        self._rng = rng if rng is not None else random.Random()
        # cumulative upper bounds; zero-weight variants get an empty interval and are never drawn
        bounds: list[float] = []
        acc = 0.0
        for share in self.shares:
            acc += share
            bounds.append(acc)
        bounds[-1] = 1.0  # guard against float round-off leaving a gap below 1.0
        self._bounds = bounds
        self._decisions = {
            mode: [self._make(i, mode) for i in range(len(self.variants))]
            for mode in ("sticky user", "sticky key", "random")
        }

    def _make(self, i: int, mode: str) -> Decision:
        v = self.variants[i]
        return Decision(
            variant=v,
            order=make_order(v, self.fallbacks),
            reason=f"weighted: {v} {self.shares[i]:.0%} ({mode})",
            probability=self.shares[i],
        )

    def choose(self, f: Features) -> Decision:
        """Pick by hash of the user/key when sticky and known, otherwise at random."""
        if self.sticky and f.user is not None:
            u, mode = stable_unit(self.salt, f.route, "user", f.user), "sticky user"
        elif self.sticky and f.key_id is not None:
            u, mode = stable_unit(self.salt, f.route, "key", f.key_id), "sticky key"
        else:
            u, mode = self._rng.random(), "random"
        i = bisect.bisect_right(self._bounds, u)
        # bisect_right skips zero-width intervals, but u can never reach 1.0, so i < len
        return self._decisions[mode][i]
