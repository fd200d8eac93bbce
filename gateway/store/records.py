"""Typed records that cross the boundary between the request path, the store and the learners.

A `CallRecord` is built once per request by the pipeline and handed to the batched writer;
a `FeedbackRecord` is built by the feedback API or by implicit-signal detection; an
`ArtifactRecord` (and its `Transition`s) by the learners and the rollout step.
Timestamps are unix seconds (float, UTC).
"""

from __future__ import annotations

import operator
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

JSON = Any  # a value that json/orjson can serialise

FeedbackSignal = Literal["used", "copied", "edited", "regenerated", "rephrased", "abandoned", "corrected"]
FeedbackSource = Literal["user", "inferred"]
ArtifactKind = Literal["template", "index", "policy"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("template", "index", "policy")
ArtifactState = Literal["candidate", "canary", "promoted", "rolled_back", "rejected"]


_R = TypeVar("_R")
_FIELDS: dict[type, tuple[dict[str, int], Callable[[Any], tuple[Any, ...]]]] = {}


def evolve(record: _R, **changes: Any) -> _R:
    """`dataclasses.replace` for these records at under a third of its cost: the writer copies
    every call it scrubs, `replace` walks `fields()` on each copy, and keyword construction of a
    29-field record costs twice its positional construction."""
    cls = type(record)
    cached = _FIELDS.get(cls)
    if cached is None:
        names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        cached = _FIELDS[cls] = ({n: i for i, n in enumerate(names)}, operator.attrgetter(*names))
    index, values = cached
    args = list(values(record))
    for name, value in changes.items():
        try:
            args[index[name]] = value
        except KeyError:
            raise TypeError(f"{cls.__name__} has no field {name!r}") from None
    return cls(*args)


_ID_BYTES = 12
_random_pool = bytearray()
_random_pid = 0
_random_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """A collision-free, unguessable id that sorts by creation time, such as
    `chatcmpl-19ab3c4d5e61f3a…`: 11 hex digits of unix milliseconds, then 96 random bits.

    Call ids authorise feedback on a call, so the random part comes from the OS's CSPRNG, read
    4 KiB at a time (one getrandom() per request showed in profiles) and never shared across a
    fork. The time prefix is for the store: ids are primary keys, and random keys scattered every
    insert over the whole index (SQLite spent 28 instead of 16 us a row at 25,000 rows, and more
    as the table grew), while time-ordered ones append at its end.
    """
    global _random_pid
    with _random_lock:  # feedback ids are also made on worker threads
        if len(_random_pool) < _ID_BYTES or _random_pid != os.getpid():
            _random_pool[:] = secrets.token_bytes(4096)
            _random_pid = os.getpid()
        chunk = _random_pool[-_ID_BYTES:]
        del _random_pool[-_ID_BYTES:]
    return f"{prefix}-{time.time_ns() // 1_000_000:011x}{chunk.hex()}"


def id_time(record_id: str) -> float | None:
    """When a `new_id` id was made (unix seconds), or None for an id this gateway did not make."""
    _, sep, tail = record_id.rpartition("-")
    if not sep or len(tail) != 11 + 2 * _ID_BYTES:
        return None
    try:
        return int(tail[:11], 16) / 1000
    except ValueError:
        return None


@dataclass(slots=True)
class Attempt:
    """One upstream try: a retry or a fallback is one more attempt."""

    model: str  # configured model name (config.toml [models.X])
    provider: str  # configured provider name
    status: int | None  # upstream HTTP status; None when no response (timeout, reset)
    error: str | None  # upstream error message, None on success
    latency_ms: float
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Escalation:
    """A cheaper variant's answer that memory disagreed with and a stronger one re-answered
    (`[routes.X] escalate`): it was paid for, never served. No text is kept, only whether the
    served answer said the same, which is what the router learns the cheaper variant's outcome from."""

    variant: str
    model: str
    cost_usd: float | None  # what the unused answer cost (included in the call's cost_usd)
    same_answer: bool  # the served answer equals it, case and outer space aside


def escalation_from_json(value: JSON) -> Escalation | None:
    """An Escalation from its JSON object (store column, spill line); None stays None."""
    if value is None:
        return None
    return Escalation(variant=value["variant"], model=value["model"], cost_usd=value.get("cost_usd"),
                      same_answer=bool(value["same_answer"]))


@dataclass(slots=True)
class CallRecord:
    """Everything the gateway knows about one request, as it will be stored."""

    id: str
    route: str  # the route name, or the model name for a pass-through
    variant: str  # the variant that produced the final answer (or was last tried)
    model: str  # configured model name of that variant
    endpoint: Literal["chat", "embeddings"] = "chat"
    created_at: float = field(default_factory=time.time)
    key_id: str | None = None  # virtual key *name*, never the key
    user: str | None = None
    session_id: str | None = None
    template_version: str | None = None
    index_version: str | None = None
    policy_version: str | None = None
    policy_reason: str = ""
    choice_probability: float | None = None  # P(variant) under the policy, for off-policy evaluation
    request: JSON = None  # body as sent upstream (messages after template/retrieval, params)
    response: JSON = None  # final body (streams assembled into a non-stream body)
    status: int = 200  # status returned to the client
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    stream: bool = False
    no_log: bool = False  # store metadata only: request/response text is dropped
    attempts: list[Attempt] = field(default_factory=list)
    retrieved_ids: list[str] = field(default_factory=list)  # example ids injected by retrieval
    escalation: Escalation | None = None  # set when the decided variant's answer was re-asked
    # what capture changed before storing, e.g. "nul_replaced=2; request_truncated=8123456" (None: nothing)
    notes: str | None = None


@dataclass(slots=True)
class FeedbackRecord:
    """One piece of feedback about a call; rows are append-only."""

    call_id: str
    id: str = field(default_factory=lambda: new_id("fb"))
    created_at: float = field(default_factory=time.time)
    rating: int | None = None  # 1 or -1
    score: float | None = None  # within [0, 1]
    correction: str | None = None
    correction_diff: str | None = None  # unified diff response -> correction
    signal: str | None = None  # FeedbackSignal
    comment: str | None = None
    user: str | None = None
    source: FeedbackSource = "user"
    related_call_id: str | None = None  # for inferred signals: the call that revealed it
    notes: str | None = None  # what capture changed before storing (as for calls)


@dataclass(slots=True)
class ArtifactRecord:
    """A learned, immutable artifact (template, retrieval index or policy) with its manifest."""

    route: str
    kind: ArtifactKind
    version: str  # e.g. "t3"; unique per (route, kind)
    body: JSON  # the artifact itself: template text, example list, policy parameters
    state: ArtifactState = "candidate"
    parent: str | None = None
    created_at: float = field(default_factory=time.time)
    produced_by: str = ""  # learner name and settings
    data_window: tuple[float, float] | None = None
    evidence_call_ids: list[str] = field(default_factory=list)
    evidence_feedback_ids: list[str] = field(default_factory=list)
    evaluation: JSON = None  # figures from offline evaluation / canary comparison
    note: str = ""  # why: the human-readable summary of what changed


@dataclass(slots=True)
class Transition:
    """A state change of an artifact, kept for audit and replay."""

    route: str
    kind: ArtifactKind
    version: str
    from_state: ArtifactState | None
    to_state: ArtifactState
    reason: str
    at: float = field(default_factory=time.time)
    share: float | None = None  # a canary's share of traffic from this transition on (None: the default)
