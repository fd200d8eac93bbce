"""Live calls per upstream: how many are in flight now, and how long each upstream was busy with them.

The request path (gateway/serve/pipeline.py) calls `enter(provider)` before it sends a live call
and `leave(provider)` once the answer (or a stream's last chunk) is in: a dict lookup and an
integer add each, plus a clock read when an upstream goes from idle to busy or back. Replays of
the learners run through pipelines of their own and are not counted. Learners read the figures
through `LearningHost.live_activity` (gateway/learning.py), never this module: the evaluation gate
(learners/economy.py) holds its replays back while live traffic needs the upstream.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from urllib.parse import urlsplit


class LiveLoad:
    """Counters of live calls per upstream (provider name); read without locks (one event loop)."""

    __slots__ = ("_clock", "_since", "busy_s", "in_flight", "last_end", "started")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.in_flight: dict[str, int] = {}
        self.started: dict[str, int] = {}  # live calls started so far (the gate charges those a replay delayed)
        self.busy_s: dict[str, float] = {}  # seconds with at least one live call in flight (closed spans)
        self.last_end: dict[str, float] = {}  # clock time the upstream last went idle
        self._since: dict[str, float] = {}  # clock time the open busy span began

    def enter(self, upstream: str) -> None:
        """A live call to `upstream` starts (sent, or waiting for its retry)."""
        n = self.in_flight.get(upstream, 0)
        self.in_flight[upstream] = n + 1
        self.started[upstream] = self.started.get(upstream, 0) + 1
        if n == 0:
            self._since[upstream] = self._clock()

    def leave(self, upstream: str) -> None:
        """A live call to `upstream` ended (answered, failed or cancelled)."""
        n = self.in_flight.get(upstream, 0) - 1
        self.in_flight[upstream] = max(n, 0)
        if n == 0:
            now = self._clock()
            self.busy_s[upstream] = self.busy_s.get(upstream, 0.0) + now - self._since.pop(upstream, now)
            self.last_end[upstream] = now

    def busy_total(self, upstream: str) -> float:
        """Seconds `upstream` has been busy with live calls so far, the open span included."""
        since = self._since.get(upstream)
        return self.busy_s.get(upstream, 0.0) + (self._clock() - since if since is not None else 0.0)


def default_slots(base_url: str | None) -> int | None:
    """Requests an upstream serves at once when its config does not say: one for a server on this
    machine or a private network (llama.cpp, Ollama: one request at a time by default), None
    (many: a cloud API) otherwise."""
    if not base_url:
        return None
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host.endswith(".local"):
        return 1
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return 1 if addr.is_loopback or addr.is_private or addr.is_link_local else None
