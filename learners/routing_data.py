"""Logged calls + feedback -> routing examples (features, variant, quality, cost, propensity).

The request path and the policy learner must featurise a request the same way, so both use
`gateway.messages.query_text` and `prompt_facts` from here. Stored prompts are re-embedded with the route's
embedder: the store keeps text, not vectors. Stored prompts are the ones sent upstream, so what
the template and retrieval added is taken out again (`gateway.serve.injected.client_messages`) before
counting: a re-featurised call has the Features the router saw.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gateway.capture.quality import call_quality
from gateway.messages import query_text
from gateway.serve.injected import client_messages, injected_examples
from gateway.serve.outcomes import call_outcomes
from gateway.store.base import Store
from gateway.store.records import CallRecord, FeedbackRecord
from policies.base import Features
from policies.featurise import memory_agreement
from retrieval.embeddings import EmbedMany

Unrated = Literal["ignore", "ok"]


def prompt_facts(messages: Any) -> tuple[int, int]:
    """(characters of string contents, number of messages), as the pipeline counts them."""
    if not isinstance(messages, list):
        return 0, 0
    chars = sum(len(c) for m in messages if isinstance(m, dict) and isinstance(c := m.get("content"), str))
    return chars, len(messages)


@dataclass(frozen=True, slots=True)
class Example:
    """One logged call as the router sees it, with what feedback said about it."""

    call_id: str
    at: float
    features: Features
    variant: str  # the variant that answered
    quality: float | None  # None: no usable feedback (and unrated calls are ignored)
    cost: float
    propensity: float | None  # P(variant) under the logging policy; None when unusable (fallback)
    policy_version: str | None
    implicit: bool = False  # quality came from the "unrated counts as ok" rule
    served: bool = True  # False: an escalated answer nobody saw, judged by the served one (`escalated_quality`)


def call_text(rec: CallRecord) -> str:
    """The last user message of a stored call ('' when the text was not stored)."""
    req = rec.request
    return query_text(req.get("messages")) if isinstance(req, dict) else ""


def features_of_call(rec: CallRecord, embedding: Any, nearest: Any = None) -> Features:
    """The Features the request path computed for `rec` (see the module doc).

    `nearest` is the embedding of the nearest injected example's input (None without one): its
    cosine with the question's `embedding` is the memory score the request path saw.
    """
    req = rec.request if isinstance(rec.request, dict) else {}
    # the request path counts the client's messages, before the template and retrieval add theirs
    sent = client_messages(rec)
    chars, n = prompt_facts(sent if sent is not None else req.get("messages"))
    score = agreement = 0.0
    shots = injected_examples(rec)
    if shots and embedding is not None and nearest is not None:
        score = float(np.dot(np.asarray(embedding, dtype=np.float64), np.asarray(nearest, dtype=np.float64)))
        agreement = memory_agreement(out for _, out in shots)
    return Features(route=rec.route, user=rec.user, key_id=rec.key_id, prompt_chars=chars, n_messages=n,
                    has_tools=bool(req.get("tools")), embedding=embedding, memory_score=score,
                    memory_agreement=agreement)


def _propensity(rec: CallRecord) -> float | None:
    # a fallback answered: the logged probability is the decided variant's, not this one's
    if len({a.model for a in rec.attempts}) > 1:
        return None
    return rec.choice_probability


async def recent_calls(store: Store, route: str, *, since: float | None, limit: int) -> list[CallRecord]:
    """The newest `limit` chat calls of `route` answered with 200 (created at or after `since`), oldest first."""
    page = 1000
    offset = 0 if since is not None else max(0, await store.count_calls(route=route) - limit)
    keep: deque[CallRecord] = deque(maxlen=limit)
    while True:
        batch = await store.list_calls(route=route, since=since, limit=page, offset=offset)
        keep.extend(c for c in batch if c.endpoint == "chat" and c.status == 200)
        if len(batch) < page:
            return list(keep)
        offset += page


async def embed_calls(calls: Sequence[CallRecord], embed_many: EmbedMany) -> tuple[list[Any], list[Any]]:
    """Each stored call's question embedding, and its nearest injected example's (None without
    one), embedded as the index embedded it (its input): `features_of_call`'s two vectors."""
    embeddings = list(await embed_many([call_text(c) for c in calls]))
    firsts = [shots[0][0] if (shots := injected_examples(c)) else None for c in calls]
    texts = [t for t in firsts if t is not None]
    vectors = iter(await embed_many(texts) if texts else [])
    return embeddings, [next(vectors) if t is not None else None for t in firsts]


def build_examples(
    calls: Sequence[CallRecord],
    feedback: Sequence[FeedbackRecord],
    embeddings: Sequence[Any],
    *,
    nearest: Sequence[Any] | None = None,
    metric: str,
    unrated: Unrated = "ignore",
    unrated_after_s: float = 600.0,
    now: float | None = None,
) -> list[Example]:
    """Join calls with their feedback (pure). Unrated calls older than `unrated_after_s` count as
    quality 1.0 when `unrated` is "ok"; otherwise they keep quality None (cost evidence only)."""
    now = time.time() if now is None else now
    by_call: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for fb in feedback:
        by_call[fb.call_id].append(fb)
    out: list[Example] = []
    near = nearest if nearest is not None else [None] * len(calls)
    for rec, emb, near_emb in zip(calls, embeddings, near, strict=True):
        q = call_quality(by_call.get(rec.id, ()), metric)
        implicit = q is None and unrated == "ok" and now - rec.created_at >= unrated_after_s
        features = features_of_call(rec, emb, near_emb)
        served, *unused = call_outcomes(rec.variant, rec.cost_usd, rec.escalation, 1.0 if implicit else q)
        out.append(Example(
            call_id=rec.id, at=rec.created_at, features=features, variant=served[0], quality=served[1],
            cost=served[2], propensity=None if unused else _propensity(rec), policy_version=rec.policy_version,
            implicit=implicit,
        ))
        # the escalated answer is the decided variant's outcome: the logged probability is its own
        out.extend(Example(
            call_id=rec.id, at=rec.created_at, features=features, variant=variant, quality=quality, cost=cost,
            propensity=rec.choice_probability, policy_version=rec.policy_version, implicit=implicit, served=False,
        ) for variant, quality, cost in unused)
    return out


async def load_examples(
    store: Store,
    route: str,
    embed_many: EmbedMany,
    *,
    metric: str,
    unrated: Unrated = "ignore",
    unrated_after_s: float = 600.0,
    since: float | None = None,
    limit: int = 5000,
    now: float | None = None,
) -> list[Example]:
    """The route's newest `limit` answered chat calls as examples, oldest first, prompts re-embedded."""
    calls = await recent_calls(store, route, since=since, limit=limit)
    if not calls:
        return []
    ids = [c.id for c in calls]
    feedback: list[FeedbackRecord] = []
    for i in range(0, len(ids), 500):
        feedback += await store.list_feedback(call_ids=ids[i : i + 500])
    embeddings, nearest = await embed_calls(calls, embed_many)
    return build_examples(calls, feedback, embeddings, nearest=nearest, metric=metric, unrated=unrated,
                          unrated_after_s=unrated_after_s, now=now)
