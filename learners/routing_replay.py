"""Counterfactual replays for the router: held-out calls answered by every variant, each scored.

Logged traffic only shows the variant the router chose. A variant it seldom picks (the cheap one,
while the strong one looks safer) stays unknown exactly where it may already be good enough: once
retrieval memory holds solved cases like the request, a small model often answers as well as a
large one. Exploration finds that out slowly (a few percent of traffic); replays find it out in
one learning cycle, at a bounded price.

`replay_variants` sends up to `n` of the cycle's held-out calls (the newest; each has a reference
answer: a correction or a well-rated answer) to every variant of the route through the gateway's
own pipeline, with the route's current template and index pinned and the call's own example left
out (so the memory a replay sees is what a new, similar request would see), and scores each
answer with the learners' metric. A `Replay` pairs the request's Features (as the request path
computes them: `learners.routing_data.features_of_call` on the replayed record) with each
variant's (quality, cost). The router learns from them like from feedback (gateway/serve/routing.py)
and the policy learner trains and evaluates candidates on them (learners/routing.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.serve.augment import ServingSet
from gateway.serve.outcomes import Outcome, Replay
from learners.dataset import EvalCase
from learners.evaluate import ArmResult, Replayer
from learners.routing_data import embed_calls, features_of_call
from retrieval.embeddings import EmbedMany


async def replay_variants(
    replayer: Replayer, serving: ServingSet, cases: Sequence[EvalCase], variants: Sequence[str],
    embed_many: EmbedMany, *, n: int,
) -> list[Replay]:
    """The newest `n` cases replayed on every variant (see the module doc), in case order.

    A case is kept only when every variant answered it (a failed call or a spent budget leaves
    no comparable outcome); the replayer's budget bounds the calls made.
    """
    chosen = list(cases)[-n:] if n > 0 else []
    if not chosen or not variants:
        return []
    arms: dict[str, ArmResult] = {}
    for v in variants:
        arms[v] = await replayer.run(serving, chosen, leave_one_out=True, variant=v)
    by_variant = {v: {r.call_id: r for r in arm.results if r.record is not None} for v, arm in arms.items()}
    first = by_variant[variants[0]]
    complete = [c.call_id for c in chosen if all(c.call_id in by_variant[v] for v in variants)]
    records = [rec for cid in complete if (rec := first[cid].record) is not None]
    embeddings, nearest = await embed_calls(records, embed_many)
    replays: list[Replay] = []
    for cid, rec, emb, near in zip(complete, records, embeddings, nearest, strict=True):
        outcomes = {v: Outcome(r.score, (r.record.cost_usd if r.record else None) or 0.0)
                    for v in variants for r in (by_variant[v][cid],)}
        replays.append(Replay(features_of_call(rec, emb, near), outcomes))
    return replays

