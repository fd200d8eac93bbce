"""NUL characters (U+0000) in text: PostgreSQL's text type cannot hold them, so one in a message or
in the `user` field failed a whole batch insert. They are replaced by U+FFFD before storage on both
backends alike, and the row's `notes` say how many were."""

from __future__ import annotations

from typing import Any

from gateway.store.records import JSON, CallRecord, FeedbackRecord, evolve

NUL = "\x00"
NUL_JSON = b"\\u0000"  # how orjson writes U+0000 in a JSON string: a cheap test on an encoded record
REPLACEMENT = "\ufffd"

_CALL_TEXTS = ("request", "response", "error", "user", "session_id", "key_id", "policy_reason", "route",
               "variant", "model", "template_version", "index_version", "policy_version")
_FEEDBACK_TEXTS = ("call_id", "correction", "correction_diff", "signal", "comment", "user", "related_call_id")


def strip_nul(value: JSON) -> tuple[JSON, int]:
    """`value` with every NUL in its strings (keys included) replaced; (value, NULs replaced).
    Copies only the containers that held one."""
    if isinstance(value, str):
        n = value.count(NUL)
        return (value.replace(NUL, REPLACEMENT), n) if n else (value, 0)
    if isinstance(value, dict):
        total = 0
        out: dict[str, Any] = {}
        for k, v in value.items():
            k2, nk = strip_nul(k)
            v2, nv = strip_nul(v)
            total += nk + nv
            out[k2] = v2
        return (out, total) if total else (value, 0)
    if isinstance(value, list):
        total = 0
        items: list[Any] = []
        for v in value:
            v2, nv = strip_nul(v)
            total += nv
            items.append(v2)
        return (items, total) if total else (value, 0)
    return value, 0


def _noted(notes: str | None, replaced: int) -> str:
    note = f"NUL characters replaced: {replaced}"
    return note if not notes else f"{notes}; {note}"


def _fields_without_nul(obj: object, names: tuple[str, ...]) -> tuple[dict[str, Any], int]:
    """The named text fields of `obj` that held NULs, with them replaced, and how many were."""
    changes: dict[str, Any] = {}
    replaced = 0
    for name in names:
        value, n = strip_nul(getattr(obj, name))
        if n:
            changes[name] = value
            replaced += n
    return changes, replaced


def call_without_nul(rec: CallRecord) -> CallRecord:
    """`rec` with NULs replaced in every text it stores (the count added to its notes)."""
    changes, replaced = _fields_without_nul(rec, _CALL_TEXTS)
    attempts = []
    for a in rec.attempts:
        error, n = strip_nul(a.error)
        replaced += n
        attempts.append(evolve(a, error=error) if n else a)
    if not replaced:
        return rec
    return evolve(rec, **changes, attempts=attempts, notes=_noted(rec.notes, replaced))


def feedback_without_nul(fb: FeedbackRecord) -> FeedbackRecord:
    """`fb` with NULs replaced in its texts (the count added to its notes)."""
    changes, replaced = _fields_without_nul(fb, _FEEDBACK_TEXTS)
    if not replaced:
        return fb
    return evolve(fb, **changes, notes=_noted(fb.notes, replaced))
