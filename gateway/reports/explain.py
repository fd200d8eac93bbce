"""What the admin API and the CLI show about learned artifacts: versions, the audit log, diffs.

Read-only over the store. A diff compares two versions of one kind as text (a template's full
text; an index's examples as "User:"/"Assistant:" lines) and lists the evidence behind the newer
one: the calls (question and answer) and the feedback (corrections, ratings…) that led to it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from gateway.capture.corrections import response_text
from gateway.messages import content_text
from gateway.serve.injected import client_messages
from gateway.serve.templating import Template, TemplateError
from gateway.store.artifacts import ArtifactRegistry, KindStates, kind_of, version_number
from gateway.store.records import JSON, ArtifactKind, ArtifactRecord, FeedbackRecord


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: str
    kind: ArtifactKind
    state: str
    created_at: float
    parent: str | None
    produced_by: str
    note: str
    evaluation: JSON
    evidence_calls: int
    evidence_feedback: int
    current: bool = False


@dataclass(frozen=True, slots=True)
class LogEntry:
    at: float
    kind: ArtifactKind
    version: str
    from_state: str | None
    to_state: str
    reason: str


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    id: str
    created_at: float
    rating: int | None = None
    score: float | None = None
    correction: str | None = None
    signal: str | None = None
    comment: str | None = None
    source: str = "user"


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    call_id: str
    created_at: float
    question: str
    answer: str
    feedback: tuple[FeedbackItem, ...] = ()


@dataclass(frozen=True, slots=True)
class VersionDiff:
    route: str
    kind: ArtifactKind
    from_version: str | None
    to_version: str
    diff: str  # unified diff, "" when the texts are equal
    note: str
    evaluation: JSON
    evidence: tuple[EvidenceItem, ...] = ()
    evidence_total: int = 0
    states: dict[str, str] = field(default_factory=dict)


class NoSuchVersion(KeyError):
    """A version (or a route with no versions of that kind) that does not exist."""


def artifact_text(rec: ArtifactRecord | None) -> str:
    """The text a diff compares for one artifact ("" for None)."""
    if rec is None:
        return ""
    if rec.kind == "template":
        try:
            return Template.from_body(rec.body).text()
        except TemplateError:
            return str(rec.body)
    if rec.kind == "index" and isinstance(rec.body, dict):
        rows = sorted(rec.body.get("examples", []), key=lambda e: str(e.get("id")))
        return "\n".join(f"[{e.get('id')}]\nUser: {e.get('input')}\nAssistant: {e.get('output')}" for e in rows)
    import json

    return json.dumps(rec.body, indent=2, sort_keys=True, default=str)


def _info(rec: ArtifactRecord, ks: KindStates) -> VersionInfo:
    state = ks.versions[rec.version].state if rec.version in ks.versions else rec.state
    return VersionInfo(rec.version, rec.kind, state, rec.created_at, rec.parent, rec.produced_by, rec.note,
                       rec.evaluation, len(rec.evidence_call_ids), len(rec.evidence_feedback_ids),
                       rec.version == ks.current)


async def versions(registry: ArtifactRegistry, route: str, kind: ArtifactKind) -> list[VersionInfo]:
    """Every version of one kind, oldest first, with state, parent and evaluation figures."""
    ks = await registry.states(route, kind)
    recs = sorted(await registry.list_versions(route, kind, bodies=False), key=lambda r: version_number(r.version))
    return [_info(r, ks) for r in recs]


async def log(registry: ArtifactRegistry, route: str, kind: ArtifactKind | None = None, *,
              decisions_only: bool = False) -> list[LogEntry]:
    """The audit log: every transition with its reason (only promotions, rollbacks, rejections…
    with `decisions_only`)."""
    out = [LogEntry(t.at, t.kind, t.version, t.from_state, t.to_state, t.reason)
           for t in await registry.history(route, kind)]
    return [e for e in out if e.from_state is not None] if decisions_only else out


def _feedback_item(fb: FeedbackRecord) -> FeedbackItem:
    return FeedbackItem(fb.id, fb.created_at, fb.rating, fb.score, fb.correction, fb.signal, fb.comment, fb.source)


async def evidence(
    registry: ArtifactRegistry, rec: ArtifactRecord, *, limit: int = 20,
) -> tuple[list[EvidenceItem], int]:
    """The calls and feedback behind `rec` (those it added first), up to `limit`; and the total."""
    ev = rec.evaluation if isinstance(rec.evaluation, dict) else {}
    added = [str(i).split("#")[0] for i in ev.get("added", [])]
    call_ids = list(dict.fromkeys([*added, *rec.evidence_call_ids]))
    store = registry.store
    wanted = call_ids[:limit]
    by_call: dict[str, list[FeedbackRecord]] = {}
    if wanted:
        for fb in await store.list_feedback(call_ids=wanted):
            by_call.setdefault(fb.call_id, []).append(fb)
    items: list[EvidenceItem] = []
    for call_id in wanted:
        call = await store.get_call(call_id)
        if call is None:
            continue
        msgs = client_messages(call) or []
        question = next((content_text(m.get("content")) for m in reversed(msgs) if m.get("role") == "user"), "")
        items.append(EvidenceItem(call_id, call.created_at, question, response_text(call.response),
                                  tuple(_feedback_item(f) for f in by_call.get(call_id, []))))
    return items, len(call_ids)


async def diff(registry: ArtifactRegistry, route: str, a: str | None = None, b: str | None = None, *,
               kind: ArtifactKind = "template", evidence_limit: int = 20) -> VersionDiff:
    """Unified diff from `a` to `b` plus the evidence behind `b`.

    Defaults: `b` is the newest version of `kind` (the kind follows `b`'s or `a`'s prefix when
    given), `a` is `b`'s parent (or the version before it).
    """
    given = b or a
    if given:
        kind = kind_of(given)
    recs = {r.version: r for r in await registry.list_versions(route, kind, bodies=False)}
    if not recs:
        raise NoSuchVersion(f"route {route} has no {kind} versions")
    order = sorted(recs, key=version_number)
    b = b or order[-1]
    if b not in recs:
        raise NoSuchVersion(f"route {route} has no {kind} version {b}")
    new = await registry.get(route, kind, b) or recs[b]  # the two bodies compared, not every version's
    if a is None:
        a = new.parent if new.parent in recs else next((v for v in reversed(order)
                                                        if version_number(v) < version_number(b)), None)
    if a is not None and a not in recs:
        raise NoSuchVersion(f"route {route} has no {kind} version {a}")
    old = (await registry.get(route, kind, a) or recs[a]) if a else None
    lines = difflib.unified_diff(artifact_text(old).splitlines(), artifact_text(new).splitlines(),
                                 a or "(none)", b, lineterm="")
    items, total = await evidence(registry, new, limit=evidence_limit)
    ks = await registry.states(route, kind)
    states: dict[str, str] = {v: s.state for v, s in ks.versions.items() if v in (a, b)}
    return VersionDiff(route, kind, a, b, "\n".join(lines), new.note, new.evaluation, tuple(items), total, states)


async def promoted_pair(registry: ArtifactRegistry, route: str, kind: ArtifactKind) -> tuple[str | None, str | None]:
    """(the version promoted before the current one, the current one): what `prompts diff ROUTE`
    shows by default. (None, None) when nothing is promoted; (None, current) when it is the first."""
    current = (await registry.states(route, kind)).current
    if current is None:
        return None, None
    before = [t.version for t in await registry.history(route, kind)
              if t.to_state == "promoted" and t.version != current]
    return (before[-1] if before else None), current


def to_json(value: Any) -> Any:
    """Dataclasses (and lists of them) as JSON-safe dicts."""
    from dataclasses import asdict, is_dataclass

    if isinstance(value, list):
        return [to_json(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value
