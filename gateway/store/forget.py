"""Forgetting a user everywhere: their calls and feedback, and their examples in learned artifacts.

Deleting the rows is not enough: a retrieval index holds the user's questions and the corrections
they gave, and a template's demonstrations may quote them; both were served to other users as
examples. So every version of every index and template of the routes is filtered:
- an example (index) or demonstration (template) goes when it came from one of the user's calls
  or from feedback the user gave (example ids are "<call id>#<feedback id>" or "<call id>#rated");
- every affected version's body is rewritten in place (no copy of the text stays in the store),
  and the rows an index's examples are stored in once are deleted;
- a version live now (current or canary) is superseded by a filtered copy in the same state, and
  rolled back with the reason, so running gateways (which cache versions by id) load the copy at
  their next refresh; the transition log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.base import Store
from gateway.store.records import JSON, ArtifactKind, ArtifactRecord

log = logging.getLogger(__name__)
PRODUCED_BY = "forget"


@dataclass(slots=True)
class ForgetReport:
    """What forgetting one user removed."""

    calls: int = 0
    feedback: int = 0
    examples: int = 0  # index examples and template demonstrations removed, over all versions
    versions: list[str] = field(default_factory=list)  # "route/kind/version" rewritten
    superseded: list[str] = field(default_factory=list)  # "route/kind/old->new" live versions replaced


def _theirs(example_id: str, calls: set[str], feedback: set[str]) -> bool:
    call_id, _, fb_id = example_id.partition("#")
    return call_id in calls or fb_id in feedback


def filter_body(kind: ArtifactKind, body: JSON, calls: set[str], feedback: set[str]) -> tuple[JSON, int]:
    """`body` less the user's examples; (body, examples removed)."""
    if kind == "template" and isinstance(body, dict) and isinstance(body.get("demonstrations"), list):
        demos = body["demonstrations"]
        kept = [d for d in demos if not (isinstance(d, dict) and _theirs(str(d.get("source_id", "")), calls, feedback))]
        return ({**body, "demonstrations": kept}, len(demos) - len(kept)) if len(kept) < len(demos) else (body, 0)
    if kind == "index" and isinstance(body, dict) and isinstance(body.get("examples"), list):
        gone = {str(e["id"]) for e in body["examples"]
                if isinstance(e, dict) and "id" in e
                and (_theirs(str(e["id"]), calls, feedback) or str(e.get("source_call_id")) in calls)}
        if not gone:
            return body, 0
        from retrieval.examples import VECTORS, ExampleIndex

        if VECTORS not in body:  # a version that left serving keeps no vectors: its examples are all
            kept_examples = [e for e in body["examples"] if not (isinstance(e, dict) and str(e.get("id")) in gone)]
            return {**body, "examples": kept_examples, "count": len(kept_examples)}, len(gone)
        return ExampleIndex.from_body(body).without(gone).to_body(), len(gone)
    return body, 0


async def forget_user(store: Store, users: Iterable[str], routes: Iterable[str]) -> ForgetReport:
    """Delete the rows of every id in `users` (the raw id and its pseudonym) and filter their
    examples out of the artifacts of `routes`."""
    report = ForgetReport()
    calls: set[str] = set()
    feedback: set[str] = set()
    for user in dict.fromkeys(users):
        c, f = await store.user_row_ids(user)
        calls.update(c)
        feedback.update(f)
        deleted = await store.forget_user(user)
        report.calls += deleted[0]
        report.feedback += deleted[1]
    if calls or feedback:
        registry = ArtifactRegistry(store)
        for route in routes:
            for kind in ("template", "index"):
                await _filter_kind(registry, route, kind, calls, feedback, report)  # type: ignore[arg-type]
    return report


async def _filter_kind(registry: ArtifactRegistry, route: str, kind: ArtifactKind, calls: set[str],
                       feedback: set[str], report: ForgetReport) -> None:
    states = await registry.states(route, kind)
    live = {states.current: "promoted", states.canary: "canary"}
    gone: set[str] = set()
    for rec in await registry.list_versions(route, kind):
        body, removed = filter_body(kind, rec.body, calls, feedback)
        if not removed:
            continue
        gone |= _example_ids(rec.body) - _example_ids(body)
        report.examples += removed
        report.versions.append(f"{route}/{kind}/{rec.version}")
        state = states.versions[rec.version].state if rec.version in states.versions else rec.state
        await registry.store.save_artifact(_scrubbed(rec, body, state, calls, feedback))
        reason = f"forget: {removed} examples of a forgotten user removed from {rec.version}"
        to_state = live.get(rec.version)
        if to_state is None:
            log.info("forget: %s/%s/%s filtered in place (%d examples)", route, kind, rec.version, removed)
            continue
        manifest = Manifest(produced_by=PRODUCED_BY, parent=rec.version, data_window=rec.data_window,
                            evidence_call_ids=tuple(i for i in rec.evidence_call_ids if i not in calls),
                            evidence_feedback_ids=tuple(i for i in rec.evidence_feedback_ids if i not in feedback),
                            note=reason)
        new = await registry.save_candidate(route, kind, body, manifest, evaluation=rec.evaluation, reason=reason)
        await registry.move(route, kind, new.version, to_state, reason)  # type: ignore[arg-type]
        await registry.move(route, kind, rec.version, "rolled_back", f"superseded by {new.version}: {reason}")
        report.superseded.append(f"{route}/{kind}/{rec.version}->{new.version}")
    if gone:  # the rows an index's examples are stored in once (gateway/store/index_examples.py)
        await registry.store.forget_examples(route, sorted(gone))


def _example_ids(body: JSON) -> set[str]:
    examples = body.get("examples") if isinstance(body, dict) else None
    return {str(e["id"]) for e in examples or () if isinstance(e, dict) and "id" in e}


def _scrubbed(rec: ArtifactRecord, body: Any, state: Any, calls: set[str], feedback: set[str]) -> ArtifactRecord:
    return replace(rec, body=body, state=state,
                   evidence_call_ids=[i for i in rec.evidence_call_ids if i not in calls],
                   evidence_feedback_ids=[i for i in rec.evidence_feedback_ids if i not in feedback])
