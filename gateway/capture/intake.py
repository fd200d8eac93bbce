"""Feedback intake: counts new feedback per route (what wakes the learners) and fans every row out
to its listeners (the learned router's online updates).

It holds no text work: explicit feedback is scrubbed in the batched writer's task like calls
(prepare.py), never in the HTTP handler, and inferred feedback arrives here from the preparer.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from gateway.store.health import unavailable
from gateway.store.records import CallRecord, FeedbackRecord, id_time

Listener = Callable[[FeedbackRecord], None]
Lookup = Callable[[str], Awaitable[CallRecord | None]]
MAX_PENDING = 10_000  # unrouted feedback remembered for routing later; beyond it the oldest is forgotten
PENDING_TTL_S = 3600.0  # a call still unreadable this long after it was made will not be read


class FeedbackIntake:
    """The new-feedback counter per route and the listeners of every feedback row."""

    def __init__(self, submit: Callable[[FeedbackRecord], None]) -> None:
        """`submit` hands a row to the writer (which sanitises and stores it)."""
        self._submit = submit
        self.new_feedback: Counter[str] = Counter()  # route -> feedback rows since the last learning run
        self.unrouted = 0  # accepted before their call could be read (its route unknown yet)
        self.pending: deque[str] = deque(maxlen=MAX_PENDING)  # their call ids, until `route_pending`
        self.listeners: list[Listener] = []

    def accept(self, route: str | None, fb: FeedbackRecord) -> None:
        """Store `fb` and tell the learners; `route` is None when the call could not be read yet."""
        self._submit(fb)
        if route is None:
            self.unrouted += 1
            self.pending.append(fb.call_id)
        else:
            self.new_feedback[route] += 1
        for listener in self.listeners:
            listener(fb)

    async def route_pending(self, lookup: Lookup, *, limit: int = 500) -> int:
        """Count feedback accepted with 202 (its call unreadable then) for its call's route once
        `lookup` can read the call, as the 201 path counts it at once: it wakes that route's
        learner the same way. Stops at the first store error (still down); returns how many were
        routed. A call id unreadable for `PENDING_TTL_S` after its creation is let go."""
        routed = 0
        for _ in range(min(limit, len(self.pending))):
            call_id = self.pending[0]
            try:
                call = await lookup(call_id)
            except Exception as e:
                if unavailable(e):
                    break
                raise
            self.pending.popleft()
            if call is not None:
                self.new_feedback[call.route] += 1
                routed += 1
            elif (id_time(call_id) or 0.0) > time.time() - PENDING_TTL_S:
                self.pending.append(call_id)  # not written yet (spilled, in flight): look again later
        return routed

    def reset(self, route: str) -> None:
        """A learning cycle for `route` begins: count its new feedback from zero."""
        self.new_feedback[route] = 0
