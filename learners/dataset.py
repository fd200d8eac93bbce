"""Store -> dataset for one route: logged calls joined with their feedback, curated and split.

Curation rules (docs/architecture.md, the learning loop):
- only chat calls answered with status 200 whose text was logged;
- a call with a correction becomes an example whose answer is the correction (the newest
  correction of that call wins);
- a call rated up (rating 1, or score >= 0.8) becomes an example with its own answer, unless it
  also carries a negative signal (rated down, low score, regenerated, rephrased, abandoned, an
  inferred "no, I meant…" correction);
- the same question asked again (cosine >= `dedupe_threshold`): the newest correction wins and
  the older examples are retired; a correction also retires rated answers to the same question;
- an example with PII (Scrubber.find) or a redaction placeholder (`<EMAIL>`…) is dropped, as is an
  example a rolled-back artifact is blamed for (`blocked`);
- a seeded hash of the call id puts `heldout_share` of the reference-bearing calls into held-out
  evaluation cases; the rest are train. The curated examples span both: the retrieval learner
  indexes all of them and is scored leave-one-out, so every correction can reach the index while
  the score stays honest.

`curate` is pure and synchronous (it embeds, so run it in a thread); `load_dataset` fetches.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.capture.corrections import response_text
from gateway.messages import content_text
from gateway.serve.injected import client_messages
from gateway.store.base import Store
from gateway.store.records import JSON, CallRecord, FeedbackRecord
from retrieval.embeddings import Embedder
from retrieval.examples import Example, dedupe

if TYPE_CHECKING:
    from gateway.privacy.scrubber import Scrubber

NEGATIVE_SIGNALS = frozenset({"regenerated", "rephrased", "abandoned", "corrected"})
POSITIVE_SCORE = 0.8
_PLACEHOLDER = re.compile(r"<(?:EMAIL|PHONE|CARD|IBAN|IP|SSN|PERSON)>")
SUPERSEDED = "superseded by a newer correction of the same question"
REPLACED = "a correction of the same question replaces it"


@dataclass(frozen=True, slots=True)
class CurateConfig:
    """The knobs of curation; built from `[learners]`."""

    heldout_share: float = 0.3
    seed: int = 0
    dedupe_threshold: float = 0.95
    max_examples: int = 5000


@dataclass(frozen=True, slots=True)
class LoggedCall:
    """A logged chat call as the client sent it (template and retrieved examples stripped)."""

    id: str
    created_at: float
    messages: tuple[dict[str, Any], ...]
    question: str  # the last user message
    answer: str
    params: dict[str, Any]  # request fields other than model/messages/stream (temperature…)
    user: str | None = None
    key_id: str | None = None
    segment: str | None = None  # request metadata segment/label, else the key name
    template_version: str | None = None
    index_version: str | None = None
    variant: str | None = None  # the route variant that answered


@dataclass(frozen=True, slots=True)
class EvalCase:
    """A held-out call with its reference answer, replayed by the evaluator."""

    call_id: str
    messages: tuple[dict[str, Any], ...]
    question: str
    reference: str
    params: dict[str, Any]
    segment: str | None = None
    user: str | None = None
    variant: str | None = None  # the variant that answered it; replays are pinned to it


@dataclass(frozen=True, slots=True)
class Correction:
    """A corrected call: what the model answered and what it should have answered."""

    example: Example
    answer: str
    feedback_id: str


@dataclass(frozen=True, slots=True)
class DatasetStats:
    """What curation kept and why the rest was left out."""

    calls: int = 0
    feedback: int = 0
    corrections: int = 0
    rated: int = 0
    negative: int = 0
    pii: int = 0
    duplicates: int = 0
    retired: int = 0
    blocked: int = 0
    no_text: int = 0


@dataclass(frozen=True, slots=True)
class Dataset:
    """Curated examples of one route, split into train and held-out, with provenance."""

    route: str
    window: tuple[float, float]
    examples: tuple[Example, ...]  # every curated example (train and held-out calls)
    train: tuple[Example, ...]
    heldout: tuple[EvalCase, ...]
    corrections: tuple[Correction, ...]  # train corrections, for instruction distillation
    retired: tuple[tuple[str, str], ...] = ()  # (example id, why)
    stats: DatasetStats = field(default_factory=DatasetStats)
    feedback_ids: dict[str, tuple[str, ...]] = field(default_factory=dict)  # example id -> feedback ids

    @property
    def replaced(self) -> frozenset[str]:
        """The example ids a newer correction of the same question replaced: an index that leaves
        only these out of another still only adds answers (learners/growth.py)."""
        return frozenset(i for i, why in self.retired if why in (SUPERSEDED, REPLACED))

    def evidence(self, examples: Sequence[Example]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(call ids, feedback ids) behind `examples`, for a manifest."""
        calls = tuple(dict.fromkeys(e.source_call_id for e in examples))
        fbs = tuple(dict.fromkeys(f for e in examples for f in self.feedback_ids.get(e.id, ())))
        return calls, fbs


def _segment(req: JSON, key_id: str | None) -> str | None:
    meta = req.get("metadata") if isinstance(req, dict) else None
    if isinstance(meta, dict):
        for k in ("segment", "label"):
            if isinstance(meta.get(k), str) and meta[k]:
                return f"{k}={meta[k]}"
    return f"key={key_id}" if key_id else None


def logged_call(rec: CallRecord) -> LoggedCall | None:
    """A call usable for learning, or None (not chat, failed, not logged, no user question)."""
    if rec.endpoint != "chat" or rec.status != 200 or rec.no_log:
        return None
    msgs = client_messages(rec)
    if not msgs or msgs[-1].get("role") != "user":
        return None
    question = content_text(msgs[-1].get("content")).strip()
    if not question:
        return None
    req = rec.request if isinstance(rec.request, dict) else {}
    params = {k: v for k, v in req.items() if k not in ("model", "messages", "stream", "stream_options")}
    return LoggedCall(
        id=rec.id, created_at=rec.created_at, messages=tuple(msgs), question=question,
        answer=response_text(rec.response).strip(), params=params, user=rec.user, key_id=rec.key_id,
        segment=_segment(req, rec.key_id), template_version=rec.template_version,
        index_version=rec.index_version, variant=rec.variant,
    )


def is_negative(fb: FeedbackRecord) -> bool:
    """Feedback saying the answer was bad (a correction is handled on its own)."""
    return (fb.rating == -1 or (fb.score is not None and fb.score < 0.5)
            or fb.signal in NEGATIVE_SIGNALS)


def is_positive(fb: FeedbackRecord) -> bool:
    """Feedback saying the answer was good enough to imitate."""
    return fb.rating == 1 or (fb.score is not None and fb.score >= POSITIVE_SCORE)


def in_heldout(call_id: str, seed: int, share: float) -> bool:
    """The seeded, stable split: the same call is always on the same side."""
    h = hashlib.sha256(f"{seed}:{call_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < share


def _has_pii(text: str, scrubber: Scrubber | None, keep: Collection[str] = ()) -> bool:
    """Redacted text (its placeholders teach nothing), or PII of a type the route does not keep."""
    if _PLACEHOLDER.search(text):
        return True
    return scrubber is not None and any(f.type not in keep for f in scrubber.find(text))


def curate(
    route: str, calls: Sequence[CallRecord], feedback: Sequence[FeedbackRecord], embedder: Embedder, *,
    scrubber: Scrubber | None, config: CurateConfig = CurateConfig(), blocked: Collection[str] = (),
    window: tuple[float, float] | None = None, keep: Collection[str] = (),
) -> Dataset:
    """Join, label, dedupe, retire, scan and split (see the module docstring). Pure; embeds."""
    by_call: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for fb in feedback:
        by_call[fb.call_id].append(fb)
    logged = {c.id: c for c in (logged_call(r) for r in calls) if c is not None}
    corrections: list[Correction] = []
    rated: list[Example] = []
    fb_ids: dict[str, tuple[str, ...]] = {}
    counts: dict[str, int] = defaultdict(int)
    for call_id, fbs in by_call.items():
        call = logged.get(call_id)
        if call is None:
            counts["no_text"] += 1
            continue
        fbs.sort(key=lambda f: (f.created_at, f.id))
        fixes = [f for f in fbs if f.correction and f.correction.strip() and f.source == "user"]
        if fixes:
            fix = fixes[-1]  # the newest correction of a call wins
            ex = Example(f"{call_id}#{fix.id}", call.question, fix.correction.strip(),  # type: ignore[union-attr]
                         call_id, "correction", fix.created_at)
            corrections.append(Correction(ex, call.answer, fix.id))
            fb_ids[ex.id] = (fix.id,)
        elif any(is_negative(f) for f in fbs):
            counts["negative"] += 1
        elif call.answer and any(is_positive(f) for f in fbs):
            good = [f for f in fbs if is_positive(f)]
            ex = Example(f"{call_id}#rated", call.question, call.answer, call_id, "rated", good[-1].created_at)
            rated.append(ex)
            fb_ids[ex.id] = tuple(f.id for f in good)
    counts["corrections"], counts["rated"] = len(corrections), len(rated)

    def clean(ex: Example) -> bool:
        if ex.id in blocked:
            counts["blocked"] += 1
            return False
        if _has_pii(ex.input, scrubber, keep) or _has_pii(ex.output, scrubber, keep):
            counts["pii"] += 1
            return False
        return True

    fixed = [c for c in corrections if clean(c.example)]
    rated = [e for e in rated if clean(e)]
    retired: list[tuple[str, str]] = []
    kept_fix = dedupe([c.example for c in fixed], embedder, config.dedupe_threshold)
    kept_ids = {e.id for e in kept_fix}
    for c in fixed:
        if c.example.id not in kept_ids:
            retired.append((c.example.id, SUPERSEDED))
    kept_rated = dedupe(rated, embedder, config.dedupe_threshold)
    counts["duplicates"] = len(rated) - len(kept_rated)
    if kept_fix and kept_rated:
        sims = embedder.embed([e.input for e in kept_rated]) @ embedder.embed([e.input for e in kept_fix]).T
        contradicted = np.max(sims, axis=1) >= config.dedupe_threshold
        retired += [(e.id, REPLACED)
                    for e, bad in zip(kept_rated, contradicted, strict=True) if bad]
        kept_rated = [e for e, bad in zip(kept_rated, contradicted, strict=True) if not bad]
    counts["retired"] = len(retired)
    examples = sorted([*kept_fix, *kept_rated], key=lambda e: (-e.created_at, e.id))[: config.max_examples]
    examples.sort(key=lambda e: (e.created_at, e.id))
    live = {e.id for e in examples}
    held = {e.source_call_id for e in examples if in_heldout(e.source_call_id, config.seed, config.heldout_share)}
    cases = tuple(
        EvalCase(e.source_call_id, c.messages, c.question, e.output, c.params, c.segment, c.user, c.variant)
        for e in examples if e.source_call_id in held for c in (logged[e.source_call_id],)
    )
    stats = DatasetStats(calls=len(logged), feedback=len(feedback), negative=counts["negative"],
                         pii=counts["pii"], duplicates=counts["duplicates"], retired=counts["retired"],
                         blocked=counts["blocked"], no_text=counts["no_text"],
                         corrections=counts["corrections"], rated=counts["rated"])
    now = time.time()
    return Dataset(
        route=route, window=window or (min((c.created_at for c in calls), default=now), now),
        examples=tuple(examples), train=tuple(e for e in examples if e.source_call_id not in held),
        heldout=cases,
        corrections=tuple(c for c in fixed if c.example.id in live and c.example.source_call_id not in held),
        retired=tuple(retired), stats=stats, feedback_ids={k: v for k, v in fb_ids.items() if k in live},
    )


async def load_records(
    store: Store, route: str, *, since: float | None, max_calls: int = 20_000,
) -> tuple[list[CallRecord], list[FeedbackRecord]]:
    """The route's feedback since `since` and the calls it is about (newest calls first, capped)."""
    feedback = await store.list_feedback(route=route, since=since)
    ids = list(dict.fromkeys(fb.call_id for fb in reversed(feedback)))[:max_calls]
    # 500 calls a query: one query per call was ~10 s of a cycle on a store with 10k inferred feedback rows
    found: dict[str, CallRecord] = {}
    for start in range(0, len(ids), 500):
        found.update((c.id, c) for c in await store.calls_by_ids(ids[start:start + 500]))
    calls = [found[i] for i in ids if i in found]
    keep = set(found)
    return calls, [fb for fb in feedback if fb.call_id in keep]
