"""What happens to a call or a piece of feedback between the request path and the store.

Runs in the batched writer's task, never on the request path, in two steps:
- `observe(call)`, on the event loop: price the call, then detect implicit signals
  (regenerations, rephrasings, "no, I meant…" corrections) on its raw text; inferred feedback goes
  to `on_inferred`. Cheap, and it keeps state (the signal detector's memory of recent calls).
- `sanitize_call(call)` / `sanitize_feedback(fb)`: pure and thread-safe, so the writer runs them
  on a worker thread for a large call: `no_log` stripping, the `user` field pseudonymised (keyed
  hash, gateway/privacy/pseudonym.py), NUL characters replaced, request/response cut to
  `[store] max_stored_bytes` (bounds.py), then PII scrubbed (unless `[privacy] store_raw =
  true`); what was changed is recorded in the row's `notes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.capture import bounds
from gateway.capture.pricing import PriceMap
from gateway.config.settings import PrivacySettings, StoreSettings
from gateway.store.nul import call_without_nul, feedback_without_nul
from gateway.store.records import CallRecord, FeedbackRecord, evolve

if TYPE_CHECKING:
    from gateway.capture.signals import SignalDetector
    from gateway.privacy.pseudonym import Pseudonymizer
    from gateway.privacy.scrubber import Scrubber

OnInferred = Callable[[str, FeedbackRecord], None]  # (route, feedback)


class CallPreparer:
    """Prices, observes and sanitises records on their way to the store (see the module docstring)."""

    def __init__(self, privacy: Callable[[], PrivacySettings], store: Callable[[], StoreSettings],
                 on_inferred: OnInferred, *, regeneration_window_s: float = 600.0) -> None:
        from gateway.capture.signals import SignalDetector

        self._privacy = privacy  # getters: a config reload changes them
        self._store = store
        self._on_inferred = on_inferred
        self._scrubber: Scrubber | None = None
        self._scrubber_names: tuple[bool, str | None, str] | None = None  # the settings it was built for
        self._pseudonyms: tuple[bool, str | None, str, Pseudonymizer | None] | None = None
        self.signals: SignalDetector = SignalDetector(window_s=regeneration_window_s)
        self.prices = PriceMap()  # litellm's price map, for models without a configured price
        self.inferred = 0  # feedback rows inferred from implicit signals

    @property
    def scrubber(self) -> Scrubber:
        """The PII scrubber, built on first use: its name lists take a moment to load, and a
        gateway that stores raw text never needs them. Rebuilt when `[privacy] name_pseudonyms`
        (or its key) changes."""
        p = self._privacy()
        key = (p.name_pseudonyms, p.user_key_env, p.user_key_path)
        if self._scrubber is None or self._scrubber_names != key:
            from gateway.privacy.pseudonym import name_pseudonyms
            from gateway.privacy.scrubber import Scrubber

            self._scrubber, self._scrubber_names = Scrubber(names=name_pseudonyms(p)), key
        return self._scrubber

    def pseudonymizer(self) -> Pseudonymizer | None:
        """The user-id pseudonymizer the current settings ask for (rebuilt when they change)."""
        p = self._privacy()
        key = (p.pseudonymize_users, p.user_key_env, p.user_key_path)
        if self._pseudonyms is None or self._pseudonyms[:3] != key:
            from gateway.privacy.pseudonym import pseudonymizer

            self._pseudonyms = (*key, pseudonymizer(p))
        return self._pseudonyms[3]

    def load(self) -> None:
        """Build what the first call would otherwise wait for (blocking: run it on a thread)."""
        self.pseudonymizer()
        if not self._privacy().store_raw:
            _ = self.scrubber

    # -- on the event loop -----------------------------------------------------------------------

    def observe(self, rec: CallRecord, *, signals: bool = True) -> CallRecord:
        """Price the call and infer feedback from it; returns the (priced) call. `signals=False`:
        price only (a replayed journal: what it inferred may be stored already)."""
        if rec.cost_usd is None and rec.prompt_tokens is not None:
            rec = self._priced(rec)
        if signals and rec.endpoint == "chat" and not rec.no_log and rec.status == 200:
            for fb in self.signals.observe(rec):
                self.inferred += 1
                self._on_inferred(rec.route, fb)
        return rec

    def _priced(self, rec: CallRecord) -> CallRecord:
        # The provider's model name is what the price map knows; the request holds it.
        model = rec.request.get("model") if isinstance(rec.request, dict) else None
        cost = self.prices.cost(model if isinstance(model, str) else rec.model, rec.prompt_tokens,
                                rec.completion_tokens)
        return rec if cost is None else evolve(rec, cost_usd=cost)

    def prepare_call(self, rec: CallRecord) -> CallRecord:
        """`observe` then `sanitize_call`, for callers that do both in one place (benchmarks, tools)."""
        return self.sanitize_call(self.observe(rec))

    # -- thread-safe -----------------------------------------------------------------------------

    def sanitize_call(self, rec: CallRecord, *, nul: bool = True, size: int | None = None) -> CallRecord:
        """The call as it may be stored. `nul=False`: the caller knows it holds no NUL character;
        `size`: the bytes of its encoded record, when known (the writer has both from the queued
        line, which is far cheaper than walking or encoding the record again)."""
        if nul:
            rec = call_without_nul(rec)
        notes: list[str] = [rec.notes] if rec.notes else []
        if rec.no_log:
            rec = evolve(rec, request=None, response=None, error=_no_text(rec.error))
        pseudo = self.pseudonymizer()
        if pseudo is not None and rec.user is not None:
            rec = evolve(rec, user=pseudo.user(rec.user))
        # Cut before scrubbing: text that is not stored need not be scrubbed (~57 us per KB).
        limit = self._store().max_stored_bytes
        if size is not None and size <= limit:  # request and response are each smaller still
            request, cut_request, response, cut_response = rec.request, None, rec.response, None
        else:
            request, cut_request = bounds.cap(rec.request, limit)
            response, cut_response = bounds.cap(rec.response, limit)
        if cut_request or cut_response:
            rec = evolve(rec, request=request, response=response)
            notes += [f"request truncated: {cut_request}"] if cut_request else []
            notes += [f"response truncated: {cut_response}"] if cut_response else []
        if not self._privacy().store_raw:
            rec = self.scrubber.scrub_call(rec)
        return evolve(rec, notes="; ".join(notes)) if notes else rec

    def sanitize_feedback(self, fb: FeedbackRecord, *, nul: bool = True) -> FeedbackRecord:
        """The feedback row as it may be stored: user pseudonymised, NULs replaced, texts scrubbed."""
        pseudo = self.pseudonymizer()
        if pseudo is not None and fb.user is not None:
            fb = evolve(fb, user=pseudo.user(fb.user))
        if nul:
            fb = feedback_without_nul(fb)
        if self._privacy().store_raw:
            return fb
        return self.scrubber.scrub_feedback(fb)


def _no_text(error: str | None) -> str | None:
    # An upstream error message may quote the prompt; keep only that there was one.
    return None if error is None else "error (text not stored: no-log call)"
