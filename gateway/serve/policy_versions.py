"""Which learned-policy artifact serves a route: the live version, and a canary beside it.

The router (gateway/serve/routing.py) asks `arm()` on every decision of a learned route: a
canary, when one runs, serves the share the rollout recorded for it (learners/rollout.py grows
it from `[learners] canary_share` as evidence mounts), sticky per user; a request without a user
is assigned per call (never per key: one app sending no `user` would sit on one side for good).
Every decision carries the version that made it (logged as `policy_version`). `sync()` follows
the `policy` artifact states in the store: it starts and stops canaries, follows their share, and
loads a newly promoted version's learned state into the live policy.
A canary's or a promoted version's configuration is always config.toml's: only the learned
statistics come from the artifact.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.serve.route_policy import build_route_policy
from gateway.serve.runtime import Runtime
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.base import Store
from policies.base import Features
from policies.carry import carry_state
from policies.learned import LearnedPolicy
from policies.weighted import stable_unit

log = logging.getLogger("flywheel.routing")


@dataclass(slots=True)
class Canary:
    version: str
    params: dict[str, Any]  # the artifact body (LearnedPolicy.to_params)
    policy: LearnedPolicy
    config: object  # the live policy it was configured from: rebuilt when a reload replaces it
    share: float | None = None  # recorded by the rollout; None: `[learners] canary_share`


class PolicyVersions:
    """Live versions and canaries of every learned route."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime
        self.canaries: dict[str, Canary] = {}
        self.live: dict[str, str | None] = {}  # route -> version whose learned state is live
        self.promoted: dict[str, str] = {}  # route -> version loaded by sync (observability)
        self._rng = random.Random()

    def arm(self, route: str, live: LearnedPolicy, f: Features,
            sticky_user: str | None = None) -> tuple[LearnedPolicy, str | None]:
        """The policy that decides this request, and its version (None: not from an artifact);
        the canary sticks to `sticky_user` (the user's stored pseudonym), else to `f.user`."""
        canary = self.canaries.get(route)
        if canary is not None:
            share = canary.share if canary.share is not None else self._runtime().settings.learners.canary_share
            who = sticky_user if sticky_user is not None else f.user
            if who is not None:
                u = stable_unit("policy-canary", canary.version, route, "user", who)
            else:
                u = self._rng.random()
            if u < share:
                if canary.config is not live:  # config reloaded: the canary takes the new config too
                    canary.policy, canary.config = self.configured(route, live, canary.params), live
                return canary.policy, canary.version
        return live, self.live.get(route)

    def configured(self, route: str, live: LearnedPolicy, params: dict[str, Any]) -> LearnedPolicy:
        """A policy with the route's current configuration and the learned state in `params`."""
        rs = self._runtime().settings.routes[route]
        fresh = build_route_policy(route, "learned", rs.policy.params(), variants=live.variants,
                                   fallbacks=live.fallbacks, learn=rs.learn)
        assert isinstance(fresh, LearnedPolicy)
        carry_state(LearnedPolicy.from_params(params), fresh)
        return fresh

    async def sync(self, store: Store, routes: Iterable[tuple[str, LearnedPolicy]]) -> None:
        """Follow the artifact states of `routes` (name, live policy). Promotions and rollbacks are
        decided by the learners (learners/routing_cycle.py); this only serves what they decided."""
        registry = ArtifactRegistry(store)
        for route, live in routes:
            states = await registry.states(route, "policy")
            canary, current = states.canary, states.current
            if canary is None:
                self.canaries.pop(route, None)
            elif route not in self.canaries or self.canaries[route].version != canary:
                rec = await registry.get(route, "policy", canary)
                if rec is not None:
                    self.canaries[route] = Canary(canary, rec.body, self.configured(route, live, rec.body), live,
                                                  states.versions[canary].share)
            else:
                self.canaries[route].share = states.versions[canary].share
            if current is not None and current != self.live.get(route):
                rec = await registry.get(route, "policy", current)
                if rec is not None:
                    carry_state(LearnedPolicy.from_params(rec.body), live)
                    self.live[route] = current
                    self.promoted[route] = current
