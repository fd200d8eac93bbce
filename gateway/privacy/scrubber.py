"""`Scrubber`: finds PII in text and replaces it by typed placeholders, in strings, call records and
feedback records alike."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Iterable, Sequence

from gateway.privacy.findings import Finding, PiiType, redact, resolve_overlaps
from gateway.privacy.names import DEFAULT_LOCALES, NameDetector
from gateway.privacy.patterns import Run, digit_runs, find_cards, find_emails, find_ibans, find_ips, find_ssns
from gateway.privacy.phones import DEFAULT_REGIONS, PhoneDetector
from gateway.store.records import JSON, Attempt, CallRecord, FeedbackRecord, evolve

Detector = Callable[[str], list[Finding]]
_NumericDetector = Callable[[str, list[Run]], list[Finding]]

ALL_TYPES: frozenset[PiiType] = frozenset({"EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "PERSON"})

# JSON keys whose string values are identifiers or protocol vocabulary, never user text. Message
# `name` and function names must keep their ^[A-Za-z0-9_-]+$ shape, or a replay of the stored
# request through the pipeline would be refused upstream.
_STRUCTURAL_KEYS = frozenset(
    {
        "role", "model", "id", "object", "type", "finish_reason", "tool_call_id", "name",
        "system_fingerprint", "service_tier", "tool_choice", "detail", "format", "voice",
        "reasoning_effort", "stop_reason", "logprobs",
    }
)  # fmt: skip
# System prompts repeat on every call of an app, however short, and a text costs ~8 us per 200
# characters to scrub against ~0.3 us to look up; only trivial strings skip the cache.
_CACHE_MIN_LEN = 16
_CACHE_SIZE = 512
# Longer strings with no whitespace are encoded blobs (base64 images or audio), not prose.
_BLOB_MIN_LEN = 512


class Scrubber:
    """Finds and redacts emails, phone numbers, payment cards, IBANs, IP addresses, US SSNs and person names.

    Build once (the name lists take ~0.5 s to load) and reuse; `scrub*` are pure (a bounded cache of
    long scrubbed texts aside, whose races are harmless: both threads store the same value).
    """

    def __init__(
        self,
        types: Collection[PiiType] = ALL_TYPES,
        *,
        phone_regions: Sequence[str] = DEFAULT_REGIONS,
        name_locales: Sequence[str] = DEFAULT_LOCALES,
        extra_names: Iterable[str] = (),
        common_words: Iterable[str] = (),
        extra_detectors: Sequence[Detector] = (),
        cache_size: int = _CACHE_SIZE,
        names: Callable[[str], str] | None = None,
    ) -> None:
        """`types`: which PII types to look for; `phone_regions`: countries whose national phone
        formats count; `name_locales`: faker locales for name lists; `extra_names`/`common_words`:
        site-specific additions; `extra_detectors`: more detectors (e.g. `PresidioPersons`);
        `cache_size`: scrubbed texts remembered (0: none, e.g. to time the detectors); `names`:
        a person name's replacement instead of `<PERSON>` (gateway/privacy/pseudonym.py)."""
        unknown = set(types) - ALL_TYPES
        if unknown:
            raise ValueError(f"unknown PII types: {sorted(unknown)}")
        self.types: frozenset[PiiType] = frozenset(types)
        numeric: list[_NumericDetector] = []
        textual: list[Detector] = []
        if "EMAIL" in self.types:
            textual.append(find_emails)
        if "CARD" in self.types:
            numeric.append(find_cards)
        if "IBAN" in self.types:
            numeric.append(find_ibans)
        if "IP" in self.types:
            numeric.append(find_ips)
        if "SSN" in self.types:
            numeric.append(find_ssns)
        if "PHONE" in self.types:
            numeric.append(PhoneDetector(phone_regions).find)
        if "PERSON" in self.types:
            textual.append(NameDetector(name_locales, extra_names, common_words).find)
        textual.extend(extra_detectors)
        self._cache: dict[str, str] = {}
        self.names = names  # None: person names become <PERSON>
        self._cache_size = cache_size
        self._numeric = tuple(numeric)
        self._textual = tuple(textual)

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping PII spans in `text`, sorted by start."""
        if len(text) < 5:
            return []
        found: list[Finding] = []
        if self._numeric:
            runs = digit_runs(text)  # once, shared by every number-shaped detector
            if runs or ":" in text:  # no digit run: only an IPv6 address (colons) can be there
                for numeric in self._numeric:
                    found.extend(numeric(text, runs))
        for detect in self._textual:
            found.extend(detect(text))
        if not found:
            return found
        return resolve_overlaps(f for f in found if f.type in self.types)

    def scrub(self, text: str) -> str:
        """`text` with every PII span replaced by `<TYPE>` (e.g. `<EMAIL>`, `<PERSON>`; a person
        name by its pseudonym when the scrubber has `names`)."""
        if len(text) < _CACHE_MIN_LEN or not self._cache_size:
            return redact(text, self.find(text), self.names)
        # Texts repeat across calls (system prompts, templates, retrieved examples): scrub once.
        cached = self._cache.get(text)
        if cached is None:
            cached = redact(text, self.find(text), self.names)
            if len(self._cache) >= self._cache_size:
                with contextlib.suppress(StopIteration, KeyError, RuntimeError):  # another thread evicted first
                    self._cache.pop(next(iter(self._cache)))  # oldest first: dicts keep insertion order
            self._cache[text] = cached
        return text if cached == text else cached  # the caller's own object when clean: see scrub_json

    def scrub_json(self, value: JSON) -> JSON:
        """A JSON value with every user-text string scrubbed; structure, numbers, booleans, keys and
        identifier fields (role, model, id, name, ...) are left as they are. A tool call's
        `arguments` (a JSON document inside a string) is scrubbed value by value.

        Copy on write: `value` is never modified, and containers with nothing to scrub are returned
        as they are (shared with the input), so a call without PII costs a walk and no copies.
        """
        return self._walk(value, None)

    def scrub_call(self, rec: CallRecord) -> CallRecord:
        """`rec` with request, response and error texts scrubbed: a copy, or `rec` itself when
        nothing needed scrubbing.

        Metadata (user, key_id, session_id, route, ...) is kept: those are identifiers the gateway
        needs for stickiness and signals, and stay out of learned artifacts.
        """
        request = self.scrub_json(rec.request)
        response = self.scrub_json(rec.response)
        error = None if rec.error is None else self.scrub(rec.error)
        attempts = self._scrub_attempts(rec.attempts)
        if request is rec.request and response is rec.response and error is rec.error and attempts is rec.attempts:
            return rec
        return evolve(rec, request=request, response=response, error=error, attempts=attempts)

    def scrub_feedback(self, fb: FeedbackRecord) -> FeedbackRecord:
        """A copy of `fb` with correction, correction_diff and comment scrubbed."""
        return evolve(
            fb,
            correction=None if fb.correction is None else self.scrub(fb.correction),
            correction_diff=None if fb.correction_diff is None else self.scrub(fb.correction_diff),
            comment=None if fb.comment is None else self.scrub(fb.comment),
        )

    def _walk(self, value: JSON, key: str | None) -> JSON:
        if isinstance(value, str):
            return self._scrub_value(value, key)
        if isinstance(value, dict):
            return self._walk_dict(value)
        if isinstance(value, list):
            return self._walk_list(value, key)
        return value

    def _walk_dict(self, value: dict[str, JSON]) -> dict[str, JSON]:
        # Scalars are handled inline: a call's request and response are mostly short dicts of
        # ids, numbers and flags, and a recursive call per value was a third of a call's scrub.
        out: dict[str, JSON] | None = None
        for k, v in value.items():
            new: JSON
            if isinstance(v, str):
                if k in _STRUCTURAL_KEYS:
                    continue
                new = self._scrub_value(v, k)
            elif isinstance(v, dict):
                new = self._walk_dict(v)
            elif isinstance(v, list):
                new = self._walk_list(v, k)
            else:
                continue
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out

    def _walk_list(self, value: list[JSON], key: str | None) -> list[JSON]:
        out: list[JSON] | None = None
        for i, v in enumerate(value):
            new = self._walk(v, key)
            if new is not v:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out

    def _scrub_attempts(self, attempts: list[Attempt]) -> list[Attempt]:
        out: list[Attempt] | None = None
        for i, a in enumerate(attempts):
            if a.error is not None and (error := self.scrub(a.error)) is not a.error:
                if out is None:
                    out = list(attempts)
                out[i] = evolve(a, error=error)
        return attempts if out is None else out

    def _scrub_value(self, value: str, key: str | None) -> str:
        if key in _STRUCTURAL_KEYS or _is_blob(value):
            return value
        if key == "arguments":
            return self._scrub_arguments(value)
        return self.scrub(value)

    def _scrub_arguments(self, arguments: str) -> str:
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return self.scrub(arguments)
        if not isinstance(parsed, dict | list):
            return self.scrub(arguments)
        scrubbed = self._walk(parsed, None)
        # untouched arguments keep their exact text (spacing, key order, escapes)
        return arguments if scrubbed is parsed else json.dumps(scrubbed, ensure_ascii=False)


def _is_blob(s: str) -> bool:
    if s.startswith("data:"):
        return True
    return len(s) >= _BLOB_MIN_LEN and not any(c.isspace() for c in s[:_BLOB_MIN_LEN])
