"""The two narrow interfaces between serving and learning; the serving side never imports `learners`.

- `LearningHost` is what a learner may use of a running gateway: read its settings and store,
  flush what was captured, read and reset the new-feedback count, ask the artifact server to
  reload a route, and reach the router's learning interface. A learner never assigns to the
  gateway's objects; what it learned reaches the request path as artifacts in the store, which
  the serving side loads (gateway/serve/artifacts.py).
- `LearningControl` is what the admin endpoints (gateway/http/learning.py) and the console
  (gateway/console/) call: one learning cycle now, a rollback, a person's controls. The wiring
  (flywheel/app.py) attaches the learners' implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config.settings import Settings
    from gateway.observability.tracing import Tracing
    from gateway.privacy.scrubber import Scrubber
    from gateway.serve.artifacts import ArtifactServer
    from gateway.serve.embedder import EmbedderHolder
    from gateway.serve.routing import LearnedRouting
    from gateway.serve.runtime import Runtime
    from gateway.store.artifacts import ArtifactRegistry
    from gateway.store.base import Store


@dataclass(frozen=True, slots=True)
class RouteFlags:
    """A person's holds on a route: learning frozen, rollout paused (with who and why)."""

    frozen: bool = False
    paused: bool = False
    frozen_by: str = ""
    paused_by: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamActivity:
    """Live traffic to one upstream as serving sees it (replays not counted), read by the evaluation gate.

    Times are `time.monotonic()` seconds. `slots`: requests the upstream serves at once (None:
    many, as a cloud API); where it is a number, a replay in flight delays the live call behind it.
    """

    in_flight: int = 0  # live calls sent (or waiting for a retry) and not yet answered
    busy_s: float = 0.0  # seconds so far with at least one live call in flight
    last_end: float | None = None  # when the upstream last went idle of live calls (None: never)
    slots: int | None = None
    started: int = 0  # live calls started so far (a replay in flight when one starts delayed it)
    # the name the upstream goes by whatever it was asked under: a route with one provider is that
    # provider, so replays asked under either share one evaluation budget ("" when not known)
    key: str = ""


class UnknownRoute(KeyError):
    """A route that is not configured (or whose learning is frozen with `learn = false`)."""


class LearningHost(Protocol):
    """What a running gateway offers its learners."""

    @property
    def settings(self) -> Settings: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def embedders(self) -> EmbedderHolder: ...

    @property
    def serving(self) -> ArtifactServer: ...

    @property
    def routing(self) -> LearnedRouting: ...

    @property
    def tracing(self) -> Tracing | None:
        """The gateway's tracer (None: tracing off); a learning cycle is a span of its own."""
        ...

    def open_store(self) -> Store:
        """The gateway's store; RuntimeError before the gateway started."""
        ...

    async def flush_captured(self, timeout_s: float) -> None:
        """Write what the gateway has captured so far (learn from what has arrived)."""
        ...

    async def scrubber(self) -> Scrubber | None:
        """The PII scrubber (loaded off the event loop)."""
        ...

    def new_feedback(self) -> Mapping[str, int]:
        """Feedback rows per route since the route's counter was last reset."""
        ...

    def reset_new_feedback(self, route: str) -> None:
        """Start counting `route`'s new feedback again (a learning cycle has begun)."""
        ...

    async def route_pending_feedback(self) -> int:
        """Count feedback answered 202 (its call unreadable then) for its route once the call can
        be read, as 201 feedback is counted at once; how many were routed."""
        ...

    def live_activity(self, upstream: str) -> UpstreamActivity:
        """Live traffic to `upstream` (a provider's name; a route's name: its providers together)."""
        ...

    def on_feedback(self, wake: Callable[[], None]) -> None:
        """Call `wake` (cheap, on the event loop) whenever a feedback row arrives."""
        ...


class Report(Protocol):
    """A learning cycle's report: rendered as JSON by the admin API."""

    def to_json(self) -> dict[str, Any]: ...


class LearningControl(Protocol):
    """What the admin API may ask of learning."""

    @property
    def registry(self) -> ArtifactRegistry: ...

    @property
    def cycles_running(self) -> int:
        """Learning cycles in progress in this process, any route or lane (a gauge in /metrics)."""
        ...

    async def learn_route(self, route: str) -> Report:
        """One full learning cycle for `route` now; UnknownRoute for a route that is not configured."""
        ...

    async def rollback(self, route: str, version: str | None = None, reason: str = "rolled back by admin") -> object:
        """Undo a canary or promoted version at once; the decision made (a dataclass)."""
        ...

    # -- a person's controls (the console, gateway/console/; `flywheel prompts publish`) -----------
    # Each records who (a key id, never a key) and why (a required note) in the route's action log
    # and, for a version's state change, in the transition's reason. ValueError for a refused action.
    async def promote(self, route: str, version: str, *, who: str, note: str) -> object:
        """Promote a running canary now, without waiting for its online comparison."""
        ...

    async def roll_back(self, route: str, version: str | None, *, who: str, note: str) -> object:
        """Roll back a canary or a promoted version (the previous one serves again)."""
        ...

    async def set_paused(self, route: str, paused: bool, *, who: str, note: str) -> None:
        """Pause (or resume) the route's rollout: running canaries keep their share, no automatic decision."""
        ...

    async def set_frozen(self, route: str, frozen: bool, *, who: str, note: str) -> None:
        """Freeze (or unfreeze) learning for the route: no new candidates while frozen."""
        ...

    async def route_flags(self, route: str) -> RouteFlags:
        """Whether the route's learning is frozen and its rollout paused (from the action log)."""
        ...

    async def publish_template(self, route: str, source: str, *, who: str, note: str) -> object:
        """A hand-written template version (authored by a person): stored as a candidate, then
        through the same guardrails, evaluation gate and canary as a learned one."""
        ...

    async def cluster_texts(self, route: str, texts: list[str]) -> list[list[int]]:
        """Groups of similar texts (indices), as the template learner clusters corrected questions."""
        ...
