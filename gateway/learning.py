"""The two narrow interfaces between serving and learning; the serving side never imports `learners`.

- `LearningHost` is what a learner may use of a running gateway: read its settings and store,
  flush what was captured, read and reset the new-feedback count, ask the artifact server to
  reload a route, and reach the router's learning interface. A learner never assigns to the
  gateway's objects; what it learned reaches the request path as artifacts in the store, which
  the serving side loads (gateway/serve/artifacts.py).
- `LearningControl` is what the admin endpoints (gateway/http/learning.py) call: one learning
  cycle now, a rollback. The wiring (flywheel/app.py) attaches the learners' implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config.settings import Settings
    from gateway.privacy.scrubber import Scrubber
    from gateway.serve.artifacts import ArtifactServer
    from gateway.serve.embedder import EmbedderHolder
    from gateway.serve.routing import LearnedRouting
    from gateway.serve.runtime import Runtime
    from gateway.store.artifacts import ArtifactRegistry
    from gateway.store.base import Store


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


class Report(Protocol):
    """A learning cycle's report: rendered as JSON by the admin API."""

    def to_json(self) -> dict[str, Any]: ...


class LearningControl(Protocol):
    """What the admin API may ask of learning."""

    @property
    def registry(self) -> ArtifactRegistry: ...

    async def learn_route(self, route: str) -> Report:
        """One full learning cycle for `route` now; UnknownRoute for a route that is not configured."""
        ...

    async def rollback(self, route: str, version: str | None = None, reason: str = "rolled back by admin") -> object:
        """Undo a canary or promoted version at once; the decision made (a dataclass)."""
        ...
