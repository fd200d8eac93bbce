"""Feedback intake: counts new feedback per route (what wakes the learners) and fans every row out
to its listeners (the learned router's online updates).

It holds no text work: explicit feedback is scrubbed in the batched writer's task like calls
(prepare.py), never in the HTTP handler, and inferred feedback arrives here from the preparer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from gateway.store.records import FeedbackRecord

Listener = Callable[[FeedbackRecord], None]


class FeedbackIntake:
    """The new-feedback counter per route and the listeners of every feedback row."""

    def __init__(self, submit: Callable[[FeedbackRecord], None]) -> None:
        """`submit` hands a row to the writer (which sanitises and stores it)."""
        self._submit = submit
        self.new_feedback: Counter[str] = Counter()  # route -> feedback rows since the last learning run
        self.unrouted = 0  # accepted before their call could be read (its route unknown yet)
        self.listeners: list[Listener] = []

    def accept(self, route: str | None, fb: FeedbackRecord) -> None:
        """Store `fb` and tell the learners; `route` is None when the call could not be read yet."""
        self._submit(fb)
        if route is None:
            self.unrouted += 1
        else:
            self.new_feedback[route] += 1
        for listener in self.listeners:
            listener(fb)

    def reset(self, route: str) -> None:
        """A learning cycle for `route` begins: count its new feedback from zero."""
        self.new_feedback[route] = 0
