"""Feedback -> quality in [0, 1]: the one mapping the router, the policy learner and reports share.

A route chooses it with `quality_metric` in its policy table:

| metric    | rating 1 / -1 | score      | correction | implicit signal                         |
|-----------|---------------|------------|------------|-----------------------------------------|
| "rating"  | 1.0 / 0.0     | ignored    | 0.0        | ignored                                 |
| "score"   | 1.0 / 0.0 (*) | the score  | 0.0        | ignored                                 |
| "signals" | ignored       | ignored    | 0.0        | used, copied 1.0; edited 0.5;           |
|           |               |            |            | regenerated, rephrased, abandoned,      |
|           |               |            |            | corrected 0.0                           |
| "any"     | 1.0 / 0.0     | the score  | 0.0        | as for "signals"                        |

(*) "score" prefers the score and reads a rating only when the row has no score. Within one row
the strongest evidence wins: a correction, then a rating, then a score, then a signal (under
"score" the score comes before the rating). Across the rows of one call the newest row that says
something under the metric wins, as the feedback contract (docs/architecture.md) asks for corrections.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.store.records import FeedbackRecord

METRICS = ("rating", "score", "signals", "any")

SIGNAL_QUALITY: dict[str, float] = {
    "used": 1.0,
    "copied": 1.0,
    "edited": 0.5,  # useful enough to keep, not good enough to keep as it was
    "regenerated": 0.0,
    "rephrased": 0.0,
    "abandoned": 0.0,
    "corrected": 0.0,
}


def check_metric(metric: str) -> str:
    """`metric` if it is a known quality metric, else ValueError naming the choices."""
    if metric not in METRICS:
        raise ValueError(f"quality_metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def _rating(fb: FeedbackRecord) -> float | None:
    return None if fb.rating is None else (1.0 if fb.rating > 0 else 0.0)


def _signal(fb: FeedbackRecord) -> float | None:
    return None if fb.signal is None else SIGNAL_QUALITY.get(fb.signal)


def feedback_quality(fb: FeedbackRecord, metric: str) -> float | None:
    """The quality one feedback row gives its call under `metric`, or None when it says nothing."""
    if fb.correction is not None:
        return 0.0  # the user had to say what the answer should have been
    if metric == "rating":
        return _rating(fb)
    if metric == "score":
        return fb.score if fb.score is not None else _rating(fb)
    if metric == "signals":
        return _signal(fb)
    if metric == "any":
        for q in (_rating(fb), fb.score, _signal(fb)):
            if q is not None:
                return q
        return None
    raise ValueError(check_metric(metric))


def call_quality(feedback: Iterable[FeedbackRecord], metric: str) -> float | None:
    """The quality of one call from all its feedback rows: the newest row that says something wins."""
    best: tuple[float, float] | None = None  # (created_at, quality)
    for fb in feedback:
        q = feedback_quality(fb, metric)
        if q is not None and (best is None or fb.created_at >= best[0]):
            best = (fb.created_at, q)
    return None if best is None else best[1]
