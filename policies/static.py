"""The static policy: every request goes to one configured variant."""

from __future__ import annotations

from collections.abc import Sequence

from policies.base import Decision, Features, check_variants, make_order


class StaticPolicy:
    """Always chooses `variant`; `fallbacks` are tried after it, in order."""

    def __init__(self, variant: str, fallbacks: Sequence[str] = ()) -> None:
        (self.variant,) = check_variants([variant], "static policy")
        self.fallbacks = tuple(fallbacks)
        # the answer never changes, so it is built once
        self._decision = Decision(
            variant=self.variant,
            order=make_order(self.variant, self.fallbacks),
            reason=f"static: {self.variant}",
            probability=1.0,
        )

    def choose(self, f: Features) -> Decision:
        """Return the configured variant."""
        return self._decision
