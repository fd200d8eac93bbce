"""When a new example index is judged online alone, and with which retrieval settings.

Replaying held-out calls for every retrieval setting takes minutes on a slow upstream (each
replay is a model call). If every index waited for that, corrections made while it ran would
reach nobody until it ended: on a fast route, most of a day's first hundred calls. So an index
that only *adds* examples to the one serving (the canary, else current), or replaces some with a newer
correction of the same question, skips the replays: it
keeps the serving index's tuned retrieval settings and goes to the canary, whose online evidence
decides it (learners/rollout.py: it grows a rolling canary, or a canary that only adds to current).
A canary that retrieves another way than current is not grown: corrections grow current, and the
index they make sets that canary aside unless it is already ahead (`serving_index`).

The settings are raced again (learners/cycle.py) when none were raced yet on enough held-out
calls, or when the held-out set has doubled since they were: what suits 10 examples may not suit
100. An index that leaves examples out (blamed by a rollback, deduplicated, trimmed to the cap)
is replayed against current as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.artifacts import ArtifactRegistry
from learners.canary_facts import evaluation_of
from learners.index import example_ids, grown_from, retrieves_differently
from retrieval.lexical import Tuning


@dataclass(frozen=True, slots=True)
class ServingIndex:
    """The index a route serves its newest calls with: its running canary, else current."""

    version: str
    ids: frozenset[str]  # its example ids
    embedder: str | None  # the embedder its vectors come from
    tuning: Tuning | None  # the retrieval settings stored with it
    tuned_on: int  # held-out calls those settings were raced on (0: never raced)

    def grown_by(self, ids: frozenset[str], embedder: str, replaced: frozenset[str] = frozenset()) -> int:
        """How many examples `ids`, embedded by `embedder`, add when they hold all of this index's
        but those in `replaced` (superseded by a newer correction of the same question: a change
        of answer is as local as a new one). 0 when they leave out others, add nothing, or are
        re-embedded: the rollout would not count that as growth (learners/canary_facts.py `grown`)."""
        return grown_from(self.ids, ids, replaced) if embedder == self.embedder else 0

    def tuning_due(self, heldout: int) -> bool:
        """Race the retrieval settings again: never raced, or the held-out set doubled since."""
        return self.tuned_on == 0 or heldout >= 2 * self.tuned_on


async def serving_index(registry: ArtifactRegistry, route: str) -> ServingIndex | None:
    """The index the route's next corrections grow: its running canary unless that retrieves
    another way than current, else current; None when it has neither.

    A canary that changes how current retrieves (raced settings, another embedder) is judged on
    its own evidence, at its own share: corrections chained onto it would reach only that share
    until a tie runs to the evidence bound (hundreds of calls at 10 %). Grown from current they
    make an index that only adds to it, which sets such a canary aside (learners/rollout.py)."""
    states = await registry.states(route, "index")
    current = await registry.get(route, "index", states.current) if states.current else None
    canary = await registry.get(route, "index", states.canary) if states.canary else None
    rec = current if canary is None or (current is not None and retrieves_differently(current.body, canary.body)) \
        else canary
    if rec is None:
        return None
    version = rec.version
    ev = evaluation_of(rec)
    retrieval = ev.get("retrieval")
    tuning = Tuning.from_dict(retrieval) if isinstance(retrieval, dict) else None
    tuned_on = ev.get("tuned_on")
    embedder = rec.body.get("embedder") if isinstance(rec.body, dict) else None
    return ServingIndex(version, frozenset(example_ids(rec.body)), str(embedder) if embedder else None, tuning,
                        tuned_on if isinstance(tuned_on, int) else 0)


def overtaken(before: ServingIndex | None, now: ServingIndex | None, ids: frozenset[str], tuning: Tuning,
              replaced: frozenset[str] = frozenset()) -> str | None:
    """Why an index replayed against `before` must not be settled now that `now` serves (the grow
    lane promoted it during the replays), or None when it may be.

    Its offline comparison was with `before`: examples `now` added were never weighed, so a
    candidate that leaves any out (but those a newer correction replaced) would drop them on
    the strength of a comparison that did not include them. One that holds exactly `now`'s
    examples, retrieved the same way, would serve nothing new."""
    if now is None or (before is not None and now.version == before.version):
        return None
    if ids == now.ids and tuning == now.tuning:
        return f"{now.version} began serving during its replays with the same examples and retrieval"
    unweighed = now.ids - (before.ids if before is not None else frozenset()) - ids - replaced
    if unweighed:
        return (f"{now.version} began serving during its replays; it leaves out {len(unweighed)} of "
                f"{now.version}'s examples its replays never weighed: left to the next cycle")
    return None
