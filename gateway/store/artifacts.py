"""Artifact versions per (route, kind) over the Store: ids, candidates with manifests, transitions.

Generic over the kind ("template" -> t1, t2…; "index" -> i1…; "policy" -> p1…) so every learner
shares one lifecycle:

    (new) -> candidate -> canary -> promoted -> rolled_back
                       \\-> promoted (canary off) \\-> rolled_back
                       \\-> rejected

Every change is a `Transition` row with its reason (the audit log `flywheel prompts log` prints).
Bodies never change, but for one thing: an index version that ends (rejected, rolled back) drops its
vectors, the bulk of its body, and keeps its examples and settings; so does a promoted one once two
newer promotions stand before it (only current and the version its rollback restores keep them).
A running canary's share of traffic changes by a canary -> canary row carrying the new `share`
(`set_share`); it keeps the canary's `since`.
States are read from the transition rows, which are small, so finding the current and canary
versions never loads artifact bodies (an index body holds its vectors). "Current" is the version
promoted most recently that is still promoted: rolling it back makes the one before current again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.store.base import Store
from gateway.store.records import JSON, ArtifactKind, ArtifactRecord, ArtifactState, Transition
from retrieval.examples import VECTORS, without_vectors

PREFIX: dict[str, str] = {"template": "t", "index": "i", "policy": "p"}
KIND_OF_PREFIX: dict[str, ArtifactKind] = {"t": "template", "i": "index", "p": "policy"}
CREATE_ATTEMPTS = 20  # versions tried when another replica's learner takes the id first
_VERSION = re.compile(r"^([a-z])(\d+)$")

ALLOWED: dict[ArtifactState | None, frozenset[ArtifactState]] = {
    None: frozenset({"candidate"}),
    "candidate": frozenset({"canary", "promoted", "rejected"}),
    # canary -> canary: a new share; canary -> rejected: superseded by a version grown from it
    "canary": frozenset({"canary", "promoted", "rolled_back", "rejected"}),
    "promoted": frozenset({"rolled_back"}),
    "rolled_back": frozenset(),
    "rejected": frozenset(),
}


class TransitionRefused(ValueError):
    """A state change the lifecycle does not allow (or another actor moved the artifact first)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """Why an artifact exists: where it came from and what evidence produced it."""

    produced_by: str  # learner name and settings
    parent: str | None = None
    data_window: tuple[float, float] | None = None
    evidence_call_ids: tuple[str, ...] = ()
    evidence_feedback_ids: tuple[str, ...] = ()
    note: str = ""  # the human-readable summary of what changed


@dataclass(frozen=True, slots=True)
class VersionState:
    """One version's state as the transition rows tell it."""

    version: str
    state: ArtifactState
    since: float  # when it entered `state`
    promoted_at: float | None = None
    reason: str = ""
    share: float | None = None  # a canary's recorded share of traffic (None: `[learners] canary_share`)


@dataclass(frozen=True, slots=True)
class KindStates:
    """All versions of one (route, kind), and which is current / in canary."""

    versions: dict[str, VersionState] = field(default_factory=dict)

    @property
    def current(self) -> str | None:
        """The most recently promoted version still promoted."""
        live = [v for v in self.versions.values() if v.state == "promoted"]
        if not live:
            return None
        return max(live, key=lambda v: (v.promoted_at or v.since, version_number(v.version))).version

    @property
    def canary(self) -> str | None:
        """The newest version in canary (the loop keeps at most one per kind)."""
        live = [v for v in self.versions.values() if v.state == "canary"]
        return max(live, key=lambda v: version_number(v.version)).version if live else None


def version_number(version: str) -> int:
    """3 for "t3"; -1 for anything not shaped like a version id."""
    m = _VERSION.match(version)
    return int(m.group(2)) if m else -1


def kind_of(version: str) -> ArtifactKind:
    """The kind a version id belongs to, from its prefix; ValueError when unknown."""
    m = _VERSION.match(version)
    if not m or m.group(1) not in KIND_OF_PREFIX:
        raise ValueError(f"'{version}' is not a version id (t3, i2, p1…)")
    return KIND_OF_PREFIX[m.group(1)]


def fold_states(transitions: Sequence[Transition]) -> dict[ArtifactKind, KindStates]:
    """Replay transition rows (oldest first) into the state of every version, per kind."""
    out: dict[ArtifactKind, dict[str, VersionState]] = {}
    for t in transitions:
        versions = out.setdefault(t.kind, {})
        prev = versions.get(t.version)
        promoted_at = t.at if t.to_state == "promoted" else (prev.promoted_at if prev else None)
        same = prev is not None and prev.state == t.to_state  # a share change: the state began earlier
        since = prev.since if same and prev is not None else t.at
        share = t.share if t.share is not None else (prev.share if same and prev is not None else None)
        versions[t.version] = VersionState(t.version, t.to_state, since, promoted_at, t.reason, share)
    return {k: KindStates(v) for k, v in out.items()}


class ArtifactRegistry:
    """Versions and transitions for every (route, kind), on top of a Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def states(self, route: str, kind: ArtifactKind) -> KindStates:
        """States of one kind's versions, from the transition rows alone."""
        return fold_states(await self.store.list_transitions(route, kind)).get(kind, KindStates())

    async def all_states(self, route: str) -> dict[ArtifactKind, KindStates]:
        """States of every kind of one route (one query)."""
        return fold_states(await self.store.list_transitions(route))

    async def current(self, route: str, kind: ArtifactKind) -> ArtifactRecord | None:
        """The current (latest promoted) artifact, with its body."""
        version = (await self.states(route, kind)).current
        return await self.store.get_artifact(route, kind, version) if version else None

    async def canary(self, route: str, kind: ArtifactKind) -> ArtifactRecord | None:
        """The artifact in canary, with its body, or None."""
        version = (await self.states(route, kind)).canary
        return await self.store.get_artifact(route, kind, version) if version else None

    async def get(self, route: str, kind: ArtifactKind, version: str) -> ArtifactRecord | None:
        """One version, or None."""
        return await self.store.get_artifact(route, kind, version)

    async def list_versions(self, route: str, kind: ArtifactKind, *, bodies: bool = True) -> list[ArtifactRecord]:
        """Every version of one kind, oldest first, with bodies (`bodies=False`: body None; a route's
        index versions together hold its examples many times over)."""
        return await self.store.list_artifacts(route, kind, bodies=bodies)

    async def history(self, route: str, kind: ArtifactKind | None = None) -> list[Transition]:
        """Every transition of a route (optionally one kind), oldest first."""
        return await self.store.list_transitions(route, kind)

    async def next_version(self, route: str, kind: ArtifactKind) -> str:
        """The next free id: "t1" after "t0", "i1" when there is none yet."""
        taken = [version_number(v) for v in await self.store.artifact_versions(route, kind)]
        taken += [version_number(v) for v in (await self.states(route, kind)).versions]
        return f"{PREFIX[kind]}{max(taken, default=0) + 1}"

    async def save_candidate(
        self, route: str, kind: ArtifactKind, body: JSON, manifest: Manifest, *,
        evaluation: JSON = None, version: str | None = None, reason: str = "",
    ) -> ArtifactRecord:
        """Store a new candidate with its full manifest and record its creation as a transition.

        Refuses an artifact without provenance (`produced_by`), so nothing unexplained goes live.
        """
        if not manifest.produced_by:
            raise TransitionRefused("an artifact needs provenance: produced_by is empty")
        fixed = version is not None
        for _ in range(CREATE_ATTEMPTS):
            version = version if fixed else await self.next_version(route, kind)
            assert version is not None
            rec = ArtifactRecord(
                route=route, kind=kind, version=version, body=body, state="candidate", parent=manifest.parent,
                produced_by=manifest.produced_by, data_window=manifest.data_window,
                evidence_call_ids=list(manifest.evidence_call_ids),
                evidence_feedback_ids=list(manifest.evidence_feedback_ids), evaluation=evaluation, note=manifest.note,
            )
            created = Transition(route, kind, version, None, "candidate",
                                 reason or manifest.note or f"produced by {manifest.produced_by}")
            # Artifacts are immutable: the primary key refuses a second artifact under one id (two
            # replicas' learners raced for it); the loser takes the next free id instead of overwriting.
            if await self.store.create_artifact(rec, created):
                return rec
            if fixed:
                raise TransitionRefused(f"{route}/{kind}/{version} already exists")
        raise TransitionRefused(f"{route}/{kind}: no free version id after {CREATE_ATTEMPTS} attempts")

    async def move(
        self, route: str, kind: ArtifactKind, version: str, to_state: ArtifactState, reason: str,
    ) -> Transition:
        """Change a version's state along the lifecycle; TransitionRefused when not allowed."""
        state = (await self.states(route, kind)).versions.get(version)
        rec = None if state else await self.store.get_artifact(route, kind, version)
        if state is None and rec is None:
            raise KeyError(f"no artifact {route}/{kind}/{version}")
        from_state: ArtifactState = state.state if state else rec.state  # type: ignore[union-attr]
        if to_state not in ALLOWED[from_state]:
            raise TransitionRefused(f"{version} is {from_state}; it cannot become {to_state}")
        t = Transition(route, kind, version, from_state, to_state, reason, at=time.time())
        try:
            await self.store.transition(t)
        except ValueError as exc:  # another actor moved it first
            raise TransitionRefused(str(exc)) from None
        if kind == "index" and not ALLOWED[to_state]:
            await self._drop_vectors(route, version, to_state)
        elif kind == "index" and to_state == "promoted":
            await self._drop_superseded_vectors(route)
        return t

    async def _drop_superseded_vectors(self, route: str) -> None:
        """After a promotion, the promoted index version now third in line (behind current and the
        one its rollback restores) drops its vectors: a route promotes an index per batch of
        corrections, each holding every example, and superseded versions kept whole would grow the
        store with the square of its examples. Rolling back that far rebuilds the vectors from the
        examples (serving does so off the request path, `ExampleIndex.from_body`). Older versions
        dropped theirs when they fell to third."""
        promoted = sorted((v for v in (await self.states(route, "index")).versions.values() if v.state == "promoted"),
                          key=lambda v: (v.promoted_at or v.since, version_number(v.version)), reverse=True)
        if len(promoted) > 2:
            await self._drop_vectors(route, promoted[2].version, "promoted")

    async def _drop_vectors(self, route: str, version: str, state: ArtifactState) -> None:
        """An index version that will never serve again keeps its examples, not its vectors (the
        bulk of its body). The learners store a version per correction they serve, each holding
        every example's vector: kept, they would grow the store with the square of the examples."""
        rec = await self.store.get_artifact(route, "index", version)  # read fresh: annotations made meanwhile
        if rec is None or not isinstance(rec.body, dict) or VECTORS not in rec.body:
            return
        rec.body, rec.state = without_vectors(rec.body), state
        await self.store.save_artifact(rec)

    async def set_share(self, route: str, kind: ArtifactKind, version: str, share: float, reason: str) -> None:
        """Record a new traffic share for a running canary (a canary -> canary transition)."""
        state = (await self.states(route, kind)).versions.get(version)
        if state is None or state.state != "canary":
            raise TransitionRefused(f"{version} is not a canary; its share cannot change")
        t = Transition(route, kind, version, "canary", "canary", reason, at=time.time(), share=share)
        try:
            await self.store.transition(t)
        except ValueError as exc:  # another actor decided it first
            raise TransitionRefused(str(exc)) from None

    async def annotate(self, route: str, kind: ArtifactKind, version: str, **evaluation: Any) -> None:
        """Merge figures into an artifact's `evaluation` (e.g. the online comparison at promotion)."""
        rec = await self.store.get_artifact(route, kind, version)
        if rec is None:
            raise KeyError(f"no artifact {route}/{kind}/{version}")
        merged = dict(rec.evaluation) if isinstance(rec.evaluation, dict) else {}
        merged.update(evaluation)
        rec.evaluation = merged
        state = (await self.states(route, kind)).versions.get(version)
        if state is not None:
            rec.state = state.state  # save_artifact writes the whole row: keep the live state
        await self.store.save_artifact(rec)
