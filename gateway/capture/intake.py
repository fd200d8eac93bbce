"""What happens to a call or a piece of feedback between the request path and the store.

Runs in the batched writer's task, never on the request path: implicit-signal detection
(regenerations, rephrasings, "no, I meant…" corrections) on the raw text, then `no_log`
stripping, then PII scrubbing (unless `[privacy] store_raw = true`). It also counts new
feedback per route, which is what wakes the learners.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.capture.pricing import PriceMap
from gateway.config.settings import PrivacySettings
from gateway.store.records import CallRecord, FeedbackRecord, evolve

if TYPE_CHECKING:
    from gateway.capture.signals import SignalDetector
    from gateway.privacy.scrubber import Scrubber


class Capture:
    """Prepares records for storage and keeps the counters the learning loop watches."""

    def __init__(self, privacy: Callable[[], PrivacySettings], submit_feedback: Callable[[FeedbackRecord], None],
                 *, regeneration_window_s: float = 600.0) -> None:
        from gateway.capture.signals import SignalDetector

        self._privacy = privacy  # a getter: a config reload changes it
        self._submit_feedback = submit_feedback
        self._scrubber: Scrubber | None = None
        self.signals: SignalDetector = SignalDetector(window_s=regeneration_window_s)
        self.prices = PriceMap()  # litellm's price map, for models without a configured price
        self.new_feedback: Counter[str] = Counter()  # route -> feedback rows since the last learning run
        self.inferred = 0
        # called with every feedback row, explicit or inferred (the learned router's online updates)
        self.listeners: list[Callable[[FeedbackRecord], None]] = []

    @property
    def scrubber(self) -> Scrubber:
        # Built on first use: its name lists take a moment to load, and a gateway
        # that stores raw text never needs them.
        if self._scrubber is None:
            from gateway.privacy.scrubber import Scrubber

            self._scrubber = Scrubber()
        return self._scrubber

    def prepare_call(self, rec: CallRecord) -> CallRecord:
        """The writer's hook: detect implicit signals, price the call, then strip or scrub the text."""
        if rec.cost_usd is None and rec.prompt_tokens is not None:
            rec = self._priced(rec)
        if rec.endpoint == "chat" and not rec.no_log and rec.status == 200:
            for fb in self.signals.observe(rec):
                self.inferred += 1
                self.new_feedback[rec.route] += 1
                self._submit_feedback(self.scrub_feedback(fb))
                self._notify(fb)
        if rec.no_log:
            return evolve(rec, request=None, response=None, error=_no_text(rec.error))
        if self._privacy().store_raw:
            return rec
        return self.scrubber.scrub_call(rec)

    def _priced(self, rec: CallRecord) -> CallRecord:
        # The provider's model name is what the price map knows; the request holds it.
        model = rec.request.get("model") if isinstance(rec.request, dict) else None
        cost = self.prices.cost(model if isinstance(model, str) else rec.model, rec.prompt_tokens,
                                rec.completion_tokens)
        return rec if cost is None else evolve(rec, cost_usd=cost)

    def scrub_feedback(self, fb: FeedbackRecord) -> FeedbackRecord:
        return fb if self._privacy().store_raw else self.scrubber.scrub_feedback(fb)

    def feedback_arrived(self, call: CallRecord | None, fb: FeedbackRecord) -> None:
        if call is not None:
            self.new_feedback[call.route] += 1
        self._notify(fb)

    def _notify(self, fb: FeedbackRecord) -> None:
        for listener in self.listeners:
            listener(fb)


def _no_text(error: str | None) -> str | None:
    # An upstream error message may quote the prompt; keep only that there was one.
    return None if error is None else "error (text not stored: no-log call)"
