"""The fallback-chain policy: the first variant is primary, the rest are tried in order."""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import Decision, Features, check_variants, make_order


class FallbackPolicy:
    """Chooses `chain[0]`; `order` is the chain followed by any extra `fallbacks`."""

    def __init__(self, chain: Sequence[str], fallbacks: Sequence[str] = ()) -> None:
        self.chain = check_variants(chain, "fallback policy chain")
        self.fallbacks = tuple(fallbacks)
        order = make_order(self.chain[0], (*self.chain[1:], *self.fallbacks))
        then = f" (then {', '.join(order[1:])})" if len(order) > 1 else ""
        self._decision = Decision(
            variant=self.chain[0],
            order=order,
            reason=f"fallback: {self.chain[0]}{then}",
            probability=1.0,
        )

    def choose(self, f: Features) -> Decision:
        """Return the head of the chain."""
        return self._decision
