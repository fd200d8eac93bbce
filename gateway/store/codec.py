"""Records <-> table rows, JSON text, and the content-addressed blob references.

Both backends store the same rows; this module is the single place that knows the column
order of each table and how a record's fields map onto them.

Large message contents repeat across calls (system prompts, templates, retrieved examples),
so `externalize` replaces every message content longer than `BLOB_MIN_CHARS` in a request by
`{"$blob": "<sha256-hex[:32]>"}`; the text goes into the `blobs` table once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.store.records import (
    JSON,
    ArtifactRecord,
    Attempt,
    CallRecord,
    FeedbackRecord,
    Transition,
    escalation_from_json,
)

BLOB_MIN_CHARS = 200
BLOB_KEY = "$blob"

Row = Sequence[Any]

CALL_COLUMNS = (
    "id", "route", "variant", "model", "endpoint", "created_at", "key_id", "user_id", "session_id",
    "template_version", "index_version", "policy_version", "policy_reason", "choice_probability",
    "request", "response", "status", "error", "prompt_tokens", "completion_tokens", "cost_usd",
    "latency_ms", "ttft_ms", "stream", "no_log", "retrieved_ids", "escalation", "notes",
)  # fmt: skip
ATTEMPT_COLUMNS = ("call_id", "seq", "model", "provider", "status", "error", "latency_ms", "started_at")
FEEDBACK_COLUMNS = (
    "id", "call_id", "created_at", "rating", "score", "correction", "correction_diff", "signal",
    "comment", "user_id", "source", "related_call_id", "notes",
)  # fmt: skip
ARTIFACT_COLUMNS = (
    "route", "kind", "version", "body", "state", "parent", "created_at", "produced_by",
    "window_start", "window_end", "evidence_call_ids", "evidence_feedback_ids", "evaluation", "note",
)  # fmt: skip
TRANSITION_COLUMNS = ("route", "kind", "version", "from_state", "to_state", "reason", "at", "share")


def dumps(value: JSON) -> str | None:
    """JSON text for a payload column; None stays SQL NULL. Unknown types fall back to str()."""
    if value is None:
        return None
    return orjson.dumps(value, default=str).decode()


def loads(text: str | None) -> JSON:
    """Inverse of `dumps`."""
    return None if text is None else orjson.loads(text)


def blob_hash(text: str) -> str:
    """The content address of a blob: the first 32 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- blobs -----------------------------------------------------------------------------------


def _ref(text: str, blobs: dict[str, str]) -> dict[str, str]:
    h = blob_hash(text)
    blobs[h] = text
    return {BLOB_KEY: h}


def _long_text_part(part: Any) -> bool:
    return isinstance(part, dict) and isinstance(part.get("text"), str) and len(part["text"]) > BLOB_MIN_CHARS


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BLOB_KEY), str)


def externalize(request: JSON, blobs: dict[str, str]) -> JSON:
    """A copy of `request` with long message contents replaced by blob references.

    The texts are added to `blobs` (hash -> text). The caller's object is not modified.
    """
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return request
    messages: list[Any] = []
    for msg in request["messages"]:
        if isinstance(msg, dict):
            content = msg.get("content")
            if isinstance(content, str) and len(content) > BLOB_MIN_CHARS:
                msg = {**msg, "content": _ref(content, blobs)}
            elif isinstance(content, list):
                parts = [{**p, "text": _ref(p["text"], blobs)} if _long_text_part(p) else p for p in content]
                msg = {**msg, "content": parts}
        messages.append(msg)
    return {**request, "messages": messages}


def _ref_slots(request: JSON) -> Iterator[tuple[dict[str, Any], str]]:
    """(container, key) pairs in a decoded request whose value is a blob reference."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return
    for msg in request["messages"]:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if _is_ref(content):
            yield msg, "content"
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and _is_ref(part.get("text")):
                    yield part, "text"


def blob_refs(request: JSON) -> set[str]:
    """The blob hashes a decoded stored request refers to."""
    return {container[key][BLOB_KEY] for container, key in _ref_slots(request)}


def restore(request: JSON, texts: Mapping[str, str]) -> None:
    """Replace blob references in a decoded request, in place, by their text.

    A reference whose blob is missing is left as is rather than failing the read.
    """
    for container, key in _ref_slots(request):
        text = texts.get(container[key][BLOB_KEY])
        if text is not None:
            container[key] = text


# -- rows ------------------------------------------------------------------------------------


@dataclass(slots=True)
class CallRows:
    """Everything one batch of calls writes: call rows, attempt rows, blobs and blob refs."""

    calls: list[tuple[Any, ...]]
    attempts: list[tuple[Any, ...]]
    blobs: dict[str, str]
    refs: list[tuple[str, str]]  # (call_id, hash)


def call_rows(calls: Sequence[CallRecord], out: CallRows | None = None) -> CallRows:
    """Rows for a batch of calls (added to `out` when given). A `no_log` call keeps its metadata
    but no request/response."""
    if out is None:
        out = CallRows([], [], {}, [])
    for c in calls:
        request: JSON = None
        response: JSON = None
        if not c.no_log:
            mine: dict[str, str] = {}
            request = externalize(c.request, mine)
            response = c.response
            out.blobs.update(mine)
            out.refs.extend((c.id, h) for h in sorted(mine))
        out.calls.append((
            c.id, c.route, c.variant, c.model, c.endpoint, float(c.created_at), c.key_id, c.user,
            c.session_id, c.template_version, c.index_version, c.policy_version, c.policy_reason,
            _opt_float(c.choice_probability), dumps(request), dumps(response), int(c.status), c.error,
            _opt_int(c.prompt_tokens), _opt_int(c.completion_tokens), _opt_float(c.cost_usd),
            float(c.latency_ms), _opt_float(c.ttft_ms), int(c.stream), int(c.no_log),
            dumps(list(c.retrieved_ids)), dumps(c.escalation), c.notes,
        ))  # fmt: skip
        for seq, a in enumerate(c.attempts):
            out.attempts.append((
                c.id, seq, a.model, a.provider, _opt_int(a.status), a.error, float(a.latency_ms),
                float(a.started_at),
            ))  # fmt: skip
    return out


def without_calls(rows: CallRows, ids: set[str]) -> CallRows:
    """`rows` less the calls in `ids`, with their attempts, refs and the blobs only they used."""
    refs = [r for r in rows.refs if r[0] not in ids]
    used = {h for _, h in refs}
    return CallRows(
        [r for r in rows.calls if r[0] not in ids],
        [r for r in rows.attempts if r[0] not in ids],
        {h: text for h, text in rows.blobs.items() if h in used},
        refs,
    )


def user_hash(user: str) -> str:
    """How a forgotten user's id is kept: its SHA-256, never the id itself."""
    return hashlib.sha256(user.encode()).hexdigest()


def calls_from_rows(rows: CallRows) -> list[CallRecord]:
    """Inverse of `call_rows`: the records a batch of rows was built from (blob texts restored).
    For the writer's failure path: rows the database did not take go to the spill file."""
    calls = [call_from_row(r) for r in rows.calls]
    by_id = {c.id: c for c in calls}
    for r in rows.attempts:
        call_id, attempt = attempt_from_row(r)
        by_id[call_id].attempts.append(attempt)
    for c in calls:
        restore(c.request, rows.blobs)
    return calls


def call_from_row(row: Row) -> CallRecord:
    """A CallRecord (without attempts; request still holding blob references) from a calls row."""
    return CallRecord(
        id=row[0], route=row[1], variant=row[2], model=row[3], endpoint=row[4], created_at=row[5],
        key_id=row[6], user=row[7], session_id=row[8], template_version=row[9], index_version=row[10],
        policy_version=row[11], policy_reason=row[12], choice_probability=row[13], request=loads(row[14]),
        response=loads(row[15]), status=row[16], error=row[17], prompt_tokens=row[18],
        completion_tokens=row[19], cost_usd=row[20], latency_ms=row[21], ttft_ms=row[22],
        stream=bool(row[23]), no_log=bool(row[24]), retrieved_ids=loads(row[25]) or [],
        escalation=escalation_from_json(loads(row[26])), notes=row[27],
    )  # fmt: skip


def attempt_from_row(row: Row) -> tuple[str, Attempt]:
    """(call_id, Attempt) from an attempts row (seq is implied by the query order)."""
    return row[0], Attempt(
        model=row[2], provider=row[3], status=row[4], error=row[5], latency_ms=row[6], started_at=row[7]
    )


def feedback_row(fb: FeedbackRecord) -> tuple[Any, ...]:
    """The feedback row for a record."""
    return (
        fb.id, fb.call_id, float(fb.created_at), _opt_int(fb.rating), _opt_float(fb.score), fb.correction,
        fb.correction_diff, fb.signal, fb.comment, fb.user, fb.source, fb.related_call_id, fb.notes,
    )  # fmt: skip


def feedback_from_row(row: Row) -> FeedbackRecord:
    """Inverse of `feedback_row`."""
    return FeedbackRecord(
        id=row[0], call_id=row[1], created_at=row[2], rating=row[3], score=row[4], correction=row[5],
        correction_diff=row[6], signal=row[7], comment=row[8], user=row[9], source=row[10],
        related_call_id=row[11], notes=row[12],
    )  # fmt: skip


def artifact_row(a: ArtifactRecord) -> tuple[Any, ...]:
    """The artifacts row for a record."""
    start, end = a.data_window if a.data_window is not None else (None, None)
    return (
        a.route, a.kind, a.version, dumps(a.body), a.state, a.parent, float(a.created_at), a.produced_by,
        _opt_float(start), _opt_float(end), dumps(list(a.evidence_call_ids)),
        dumps(list(a.evidence_feedback_ids)), dumps(a.evaluation), a.note,
    )  # fmt: skip


def artifact_from_row(row: Row) -> ArtifactRecord:
    """Inverse of `artifact_row`."""
    window = None if row[8] is None or row[9] is None else (row[8], row[9])
    return ArtifactRecord(
        route=row[0], kind=row[1], version=row[2], body=loads(row[3]), state=row[4], parent=row[5],
        created_at=row[6], produced_by=row[7], data_window=window, evidence_call_ids=loads(row[10]) or [],
        evidence_feedback_ids=loads(row[11]) or [], evaluation=loads(row[12]), note=row[13],
    )  # fmt: skip


def transition_row(t: Transition) -> tuple[Any, ...]:
    """The transitions row for a record."""
    return (t.route, t.kind, t.version, t.from_state, t.to_state, t.reason, float(t.at), t.share)


def transition_from_row(row: Row) -> Transition:
    """Inverse of `transition_row`."""
    return Transition(
        route=row[0], kind=row[1], version=row[2], from_state=row[3], to_state=row[4], reason=row[5],
        at=row[6], share=row[7],
    )  # fmt: skip
