"""The policy learner: logged calls + feedback (+ evaluation replays) -> a candidate routing policy.

One cycle for a route (`learn_policy`):
1. the newest `limit` answered calls with their feedback become examples, prompts re-embedded
   (learners/routing_data.py), split by time: the first `train_share` to train, the rest held out;
2. a fresh policy with the live policy's configuration is trained on the training part (and the
   older `train_share` of the replays, learners/routing_replay.py), in time order, exactly as
   online learning would have seen it;
3. candidate and live policy are scored on the held-out part by inverse-propensity estimates
   with the logged choice probabilities, and on the newer replays (learners/routing_eval.py);
4. the verdict decides: an accepted candidate is refit on every example and saved as a `policy`
   artifact that goes to canary (or straight to promoted when the canary share is 0); a refused
   one is saved and marked rejected, with the reason. The note is the diff: "share to cheap
   41% → 63%, strong 59% → 37%; +1200 updates; quality −0.4 pt; cost −38%".

The live policy has learned online from the held-out calls too, so its estimate is optimistic:
the candidate must beat an opponent that has seen the exam. Learners are pure: the rollout of
the artifact (the gateway's router reading artifact states) changes live traffic, not this module.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.config.settings import LearnerSettings
from gateway.serve.outcomes import Replay
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.base import Store
from learners.rollout import Rollout
from learners.routing_data import Example, Unrated, load_examples
from learners.routing_eval import Estimate, Verdict, describe, estimate_ips, estimate_replay, judge
from policies.learned import LearnedPolicy
from policies.summary import summarise_change
from retrieval.embeddings import EmbedMany

_STATE_KEYS = ("state", "updates")


def fit_policy(
    base: LearnedPolicy, examples: Sequence[Example], replays: Sequence[Replay] = (), *, seed: int = 0
) -> LearnedPolicy:
    """A policy with `base`'s configuration and no learned state, trained on the rated examples
    (oldest first) and then on every outcome of the replays. Frozen-ness is kept but ignored
    while training: an admin freezes live learning, not the learner's view of history."""
    params = {k: v for k, v in base.to_params().items() if k not in _STATE_KEYS}
    policy = LearnedPolicy.from_params({**params, "state": {}, "frozen": False}, rng=random.Random(seed))
    known = set(policy.variants)
    for e in sorted(examples, key=lambda e: e.at):
        if e.quality is not None and e.variant in known:
            policy.update(e.features, e.variant, e.quality, e.cost)
    for r in replays:
        for v, o in r.outcomes.items():
            if v in known:
                policy.update(r.features, v, o.quality, o.cost)
    policy.frozen = base.frozen
    return policy


@dataclass(frozen=True, slots=True)
class PolicyEvaluation:
    """Candidate and live policy on the same held-out calls (and replays), and the verdict."""

    current: Estimate
    candidate: Estimate
    verdict: Verdict
    replay_current: Estimate | None = None
    replay_candidate: Estimate | None = None

    def figures(self) -> dict[str, Any]:
        """JSON-safe figures for the artifact's `evaluation`."""
        return asdict(self)


def evaluate(
    current: LearnedPolicy,
    candidate: LearnedPolicy,
    held_out: Sequence[Example],
    replays: Sequence[Replay] = (),
    *,
    max_quality_drop: float = 0.02,
    min_effective_n: float = 30.0,
) -> PolicyEvaluation:
    """Score both policies; replays, when there are enough of them, decide over the IPS estimate
    (they compare both policies on identical outcomes, with no importance weights)."""
    cur, cand = estimate_ips(current, held_out), estimate_ips(candidate, held_out)
    rcur = rcand = None
    if replays:
        rcur, rcand = estimate_replay(current, replays), estimate_replay(candidate, replays)
    use_replay = rcur is not None and rcand is not None and min(rcur.n, rcand.n) >= min_effective_n
    a, b = (rcur, rcand) if use_replay and rcur is not None and rcand is not None else (cur, cand)
    verdict = judge(a, b, max_quality_drop=max_quality_drop, min_effective_n=min_effective_n)
    return PolicyEvaluation(cur, cand, verdict, rcur, rcand)


@dataclass(frozen=True, slots=True)
class LearnResult:
    """What one learning cycle did for a route."""

    route: str
    outcome: str  # "skipped" | "rejected" | "canary" | "promoted"
    reason: str
    version: str | None = None
    summary: str = ""  # the diff line
    n_train: int = 0
    n_held_out: int = 0
    evaluation: PolicyEvaluation | None = None


async def learn_policy(
    store: Store,
    route: str,
    current: LearnedPolicy,
    embed_many: EmbedMany,
    *,
    learner: LearnerSettings | None = None,
    current_version: str | None = None,
    unrated: Unrated = "ignore",
    unrated_after_s: float = 600.0,
    replays: Sequence[Replay] = (),
    limit: int = 5000,
    train_share: float = 0.7,
    min_rated: int = 50,
    max_quality_drop: float = 0.02,
    min_effective_n: float = 30.0,
) -> LearnResult:
    """One full cycle for `route`: data, fit, offline evaluation, artifact, canary (see module doc).

    `learner` supplies `canary_share` (learners/rollout.py `Rollout.begin`); `current_version` is
    the live policy's artifact version, recorded as the candidate's parent.
    """
    settings = learner or LearnerSettings()
    examples = await load_examples(store, route, embed_many, metric=current.quality_metric, unrated=unrated,
                                   unrated_after_s=unrated_after_s, limit=limit)
    rated = sum(e.quality is not None for e in examples if e.served)
    if rated < min_rated:
        return LearnResult(route, "skipped", f"{rated} rated calls < {min_rated}")
    cut = int(len(examples) * train_share)
    train, held_out = examples[:cut], examples[cut:]
    rcut = int(len(replays) * train_share)  # replays are split too: a trial is never scored on what it saw
    trial = fit_policy(current, train, replays[:rcut])
    ev = evaluate(current, trial, held_out, replays[rcut:], max_quality_drop=max_quality_drop,
                  min_effective_n=min_effective_n)
    candidate = fit_policy(current, examples, replays) if ev.verdict.accepted else trial
    summary = summarise_change(current, candidate, [e.features for e in held_out if e.served])
    tail = describe(ev.verdict.quality_delta, ev.verdict.cost_ratio)
    if tail:
        summary = f"{summary}; {tail}"
    registry = ArtifactRegistry(store)
    manifest = Manifest(
        produced_by=f"learners.routing fit_policy (train {len(train)} / held out {len(held_out)}, "
                    f"metric {current.quality_metric}, unrated {unrated})",
        parent=current_version,
        data_window=(examples[0].at, examples[-1].at),
        evidence_call_ids=tuple(dict.fromkeys(e.call_id for e in examples if e.quality is not None))[-1000:],
        note=summary,
    )
    figures = {**ev.figures(), "refit_on_all": ev.verdict.accepted}
    rec = await registry.save_candidate(route, "policy", candidate.to_params(), manifest, evaluation=figures)
    rollout = Rollout(registry, lambda: settings)
    if ev.verdict.accepted:
        decision = await rollout.begin(route, "policy", rec.version, f"offline evaluation: {ev.verdict.reason}; "
                                                                      f"{summary}")
    else:
        decision = await rollout.reject(route, "policy", rec.version, ev.verdict.reason)
    return LearnResult(route, decision.action, ev.verdict.reason, rec.version, summary, len(train), len(held_out),
                       ev)
