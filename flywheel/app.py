"""create_app(): the one place that assembles a gateway and its learners into an ASGI app."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from gateway.config.settings import Settings
from gateway.http.app import build_app
from gateway.server import Gateway
from learners.loop import LearningLoop


def create_app(settings: Settings, *, config_path: str | Path | None = None) -> Starlette:
    """The gateway as an ASGI app, learning attached. `config_path`, when given, is watched and reloaded."""
    gw = Gateway(settings, Path(config_path) if config_path else None)
    learning = LearningLoop(gw)
    gw.attach_learning(learning, learning)
    gw.leader = learning.lease.held  # the retention sweep runs where learning does: on the lease holder
    app = build_app(gw)
    app.state.learning = learning
    return app
