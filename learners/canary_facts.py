"""What a canary's decision reads besides the feedback comparison: the facts `learners/rollout.py` weighs.

- `prior`: the offline evaluation's quality delta (the sequential rule's weak prior);
- `exposure` / `floor`: the share a new canary may open at given current's online quality, and
  the floor it keeps (learners/sequential.py `exposure_share`);
- `grown`: whether one index holds all of another's examples and more, but those newer
  corrections replaced (a rolling canary's successor, or a canary that only adds to current);
- `members`: the versions whose calls are a rolling canary's evidence, and since when;
- `implicated` / `blamed`: which examples a rolled-back index is blamed for.

Artifact bodies and evaluations that these read never change once written (annotations are
made before a version serves), so each answer is cached per `CanaryFacts`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection
from typing import Any

from gateway.capture.quality import call_quality
from gateway.config.settings import LearnerSettings
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.records import ArtifactKind, ArtifactRecord, CallRecord, FeedbackRecord
from learners.index import added_examples
from learners.sequential import ArmEvidence, Rule, exposure_share
from retrieval.lexical import answer_key

SERVED_BY: dict[ArtifactKind, Callable[[CallRecord], str | None]] = {
    "template": lambda c: c.template_version,
    "index": lambda c: c.index_version,
    "policy": lambda c: c.policy_version,
}
AUGMENTING_KINDS: tuple[ArtifactKind, ...] = ("template", "index")  # those the learning loop decides
_PAGE = 1000
_MAX_CALLS = 50_000
_EXPOSURE_CALLS = 50  # current's newest rated calls that set a new canary's opening share
_EXPOSURE_WINDOW_S = 3600.0


async def calls_since(registry: ArtifactRegistry, route: str, since: float) -> list[CallRecord]:
    """The route's calls since `since`, oldest first (at most `_MAX_CALLS`)."""
    calls: list[CallRecord] = []
    while len(calls) < _MAX_CALLS:
        page = await registry.store.list_calls(route=route, since=since, limit=_PAGE, offset=len(calls))
        calls += page
        if len(page) < _PAGE:
            break
    return calls


async def qualities(registry: ArtifactRegistry, route: str, since: float, calls: Collection[str]) -> dict[str, float]:
    """The quality of each of `calls` that has rated feedback since `since` (`call_quality`, "any")."""
    per_call: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for fb in await registry.store.list_feedback(route=route, since=since):
        if fb.call_id in calls:
            per_call[fb.call_id].append(fb)
    return {cid: q for cid, fbs in per_call.items() if (q := call_quality(fbs, "any")) is not None}


def evaluation_of(rec: ArtifactRecord | None) -> dict[str, Any]:
    """An artifact's evaluation as a dict ({} when it has none)."""
    return rec.evaluation if rec is not None and isinstance(rec.evaluation, dict) else {}


def blamed(evaluation: dict[str, Any]) -> list[str]:
    """The example ids a rolled-back or refused version is blamed for: those its canary's bad calls
    retrieved (`implicated`, set when the online decision rolled it back), else every one it added."""
    implicated = evaluation.get("implicated")
    return list(implicated if isinstance(implicated, list) else evaluation.get("added") or ())


class CanaryFacts:
    """Cached reads of the store for one `Rollout` (see the module docstring)."""

    def __init__(self, registry: ArtifactRegistry, settings: Callable[[], LearnerSettings]) -> None:
        self.registry = registry
        self.settings = settings
        self._priors: dict[tuple[str, ArtifactKind, str], float | None] = {}  # offline deltas
        self._floors: dict[tuple[str, ArtifactKind, str], float | None] = {}  # opening exposure shares
        self._chains: dict[tuple[str, ArtifactKind, str], tuple[tuple[str, ...], float] | None] = {}
        # (route, inner, outer) -> the example ids outer adds when it only adds to inner
        self._growth: dict[tuple[str, str, str], frozenset[str] | None] = {}

    async def grown(self, route: str, kind: ArtifactKind, inner: str | None, outer: str) -> int | None:
        """How many examples index `outer` adds to index `inner` when it holds all of them (but
        those a newer correction of the same question replaced, its evaluation's `replaced`), built
        by the same embedder and retrieved the same way (None otherwise, or for another kind): a
        change of retrieval settings changes every call, so it is judged on its own evidence."""
        ids = await self.added(route, kind, inner, outer)
        return None if ids is None else len(ids)

    async def added(self, route: str, kind: ArtifactKind, inner: str | None, outer: str) -> frozenset[str] | None:
        """The example ids index `outer` adds to index `inner` when it only adds to it (`grown`)."""
        if kind != "index" or inner is None:
            return None
        key = (route, inner, outer)
        if key not in self._growth:
            old, new = await self.registry.get(route, kind, inner), await self.registry.get(route, kind, outer)
            self._growth[key] = (None if old is None or new is None  # artifact bodies never change
                                 else added_examples(old.body, new.body, evaluation_of(new).get("replaced") or ()))
        return self._growth[key]

    async def members(self, route: str, kind: ArtifactKind, canary: str, since: float) -> tuple[set[str], float]:
        """The versions whose calls are the canary's evidence (it and those it superseded) and
        since when."""
        key = (route, kind, canary)
        if key not in self._chains:
            rec = await self.registry.get(route, kind, canary)
            ev = evaluation_of(rec)
            chain = ev.get("chain") if isinstance(ev.get("chain"), dict) else None
            self._chains[key] = None if chain is None else (tuple(chain["versions"]), float(chain["since"]))
        found = self._chains[key]
        return ({canary}, since) if found is None else ({canary, *found[0]}, found[1])

    async def exposure(self, route: str, kind: ArtifactKind) -> tuple[float, ArmEvidence]:
        """The share a new canary of `kind` may open at given current's online quality
        (learners/sequential.py `exposure_share`): the newest `_EXPOSURE_CALLS` rated chat calls of
        the route in the last hour that the kind's current version served (its canary calls too)."""
        rule = Rule.of(self.settings())
        if kind not in AUGMENTING_KINDS:  # a policy's quality is the route's own metric: no shortcut
            return rule.base_share, ArmEvidence(0, 0.0)
        current = (await self.registry.states(route, kind)).current
        since = time.time() - _EXPOSURE_WINDOW_S
        served = {c.id for c in await calls_since(self.registry, route, since)
                  if c.endpoint == "chat" and SERVED_BY[kind](c) == current}
        qs = list((await qualities(self.registry, route, since, served)).values())[-_EXPOSURE_CALLS:]
        evidence = ArmEvidence(len(qs), sum(qs))
        return exposure_share(rule, evidence), evidence

    async def floor(self, route: str, kind: ArtifactKind, version: str) -> float | None:
        """The exposure share `version` opened at (None: `canary_share`)."""
        key = (route, kind, version)
        if key not in self._floors:
            rec = await self.registry.get(route, kind, version)
            ev = evaluation_of(rec)
            share = (ev.get("exposure") or {}).get("share")
            self._floors[key] = float(share) if isinstance(share, int | float) else None
        return self._floors[key]

    async def prior(self, route: str, kind: ArtifactKind, version: str) -> float | None:
        """The offline evaluation's quality delta of `version` (None when it has none)."""
        key = (route, kind, version)
        if key not in self._priors:
            rec = await self.registry.get(route, kind, version)
            ev = evaluation_of(rec)
            offline = ev.get("offline") if kind != "policy" else ev.get("verdict")
            delta = (offline or {}).get("delta" if kind != "policy" else "quality_delta")
            self._priors[key] = float(delta) if isinstance(delta, int | float) else None
        return self._priors[key]

    async def implicated(self, route: str, kind: ArtifactKind, canary: str, since: float) -> list[str] | None:
        """Of the examples a rolled-back index canary added, those retrieved into its calls that
        were rated bad, and those giving the same answer: what later datasets leave out. A canary
        judged on a handful of calls can be rolled back by chance; blocking every example it added
        would throw good corrections away for good, while a poisoned example shows up in the bad
        calls it was retrieved into."""
        rec = await self.registry.get(route, kind, canary) if kind == "index" else None
        ev = evaluation_of(rec)
        added = set(ev.get("added") or ())
        if not added:
            return None
        members, _ = await self.members(route, kind, canary, since)
        served = {c.id: c for c in await calls_since(self.registry, route, since)
                  if c.index_version in members and added.intersection(c.retrieved_ids)}
        bad = {e for cid, q in (await qualities(self.registry, route, since, served)).items() if q < 0.5
               for e in added.intersection(served[cid].retrieved_ids)}
        # a poisoned batch repeats one wrong answer: its examples no bad call happened to retrieve go too
        outputs = {str(e.get("id")): answer_key(str(e.get("output", "")))
                   for e in (rec.body.get("examples", []) if rec is not None and isinstance(rec.body, dict) else [])
                   if isinstance(e, dict)}
        wrong = {outputs[e] for e in bad if e in outputs}
        return sorted(bad | {e for e in added if outputs.get(e) in wrong})
