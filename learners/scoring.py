"""How close an answer is to its reference: a score in [0, 1], chosen by `[learners] metric`.

- `exact`: 1 when identical, else 0.
- `normalised`: 1 when equal after lower-casing, dropping punctuation and articles, collapsing spaces.
- `token_f1` (default): the F1 of the normalised word multisets (SQuAD's answer metric): partial
  credit for partly right answers, no model needed, deterministic.
- `json_field`: both parsed as JSON objects, `metric_field` compared normalised (a reference that is
  not JSON is compared as the field's value).
- `embedding`: cosine similarity of the two texts' embeddings, clipped to [0, 1].
- `judge`: LLM-as-judge: the `judge_route` is asked, through the gateway, to grade the answer
  against the reference with a number in [0, 1].
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

ChatFn = Callable[[str], Awaitable[str]]  # one user message to a route -> its answer text
EmbedFn = Callable[[str], Awaitable[NDArray[np.float32]]]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"(?<![\w.])(1(?:\.0+)?|0(?:\.\d+)?|\.\d+)(?![\w.])")

JUDGE_PROMPT = (
    "You are grading an answer against a reference answer.\n"
    "Reply with one number between 0 and 1: 1 when the answer says what the reference says, "
    "0 when it contradicts or misses it.\n\n"
    "Question: {question}\nReference: {reference}\nAnswer: {answer}\n\nGrade:"
)


def normalise(text: str) -> str:
    """Lower-case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact(answer: str, reference: str) -> float:
    return float(answer.strip() == reference.strip())


def normalised_match(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


def token_f1(answer: str, reference: str) -> float:
    """F1 over normalised word multisets; 1.0 when both are empty."""
    a, r = normalise(answer).split(), normalise(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def json_field(answer: str, reference: str, field: str) -> float:
    """1 when `field` of the answer's JSON equals the reference's (normalised), else 0."""
    got = _field(answer, field)
    if got is None:
        return 0.0
    want = _field(reference, field)
    return float(normalise(str(got)) == normalise(str(want if want is not None else reference)))


def _field(text: str, field: str) -> object | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get(field) if isinstance(value, dict) else None


def parse_grade(text: str) -> float:
    """The first number in [0, 1] in a judge's reply; 0 when there is none."""
    m = _NUMBER.search(text)
    return min(1.0, max(0.0, float(m.group(1)))) if m else 0.0


@dataclass(frozen=True, slots=True)
class Graded:
    question: str
    answer: str
    reference: str


class Metric(Protocol):
    """Scores an answer against a reference."""

    name: str

    async def score(self, item: Graded) -> float: ...


class TextMetric:
    """A metric that needs nothing but the two texts."""

    def __init__(self, name: str, fn: Callable[[str, str], float]) -> None:
        self.name = name
        self._fn = fn

    async def score(self, item: Graded) -> float:
        return self._fn(item.answer, item.reference)


class EmbeddingMetric:
    name = "embedding"

    def __init__(self, embed: EmbedFn) -> None:
        self._embed = embed

    async def score(self, item: Graded) -> float:
        a, r = await self._embed(item.answer), await self._embed(item.reference)
        return float(min(1.0, max(0.0, float(np.dot(a, r)))))


class JudgeMetric:
    name = "judge"

    def __init__(self, ask: ChatFn) -> None:
        self._ask = ask

    async def score(self, item: Graded) -> float:
        reply = await self._ask(JUDGE_PROMPT.format(question=item.question, reference=item.reference,
                                                    answer=item.answer))
        return parse_grade(reply)


def build_metric(name: str, *, field: str = "answer", embed: EmbedFn | None = None,
                 judge: ChatFn | None = None) -> Metric:
    """The metric `[learners] metric` names; `embed`/`judge` are needed by those two."""
    if name == "exact":
        return TextMetric(name, exact)
    if name == "normalised":
        return TextMetric(name, normalised_match)
    if name == "token_f1":
        return TextMetric(name, token_f1)
    if name == "json_field":
        return TextMetric(name, lambda a, r: json_field(a, r, field))
    if name == "embedding":
        if embed is None:
            raise ValueError("the embedding metric needs an embedder")
        return EmbeddingMetric(embed)
    if name == "judge":
        if judge is None:
            raise ValueError("the judge metric needs learners.judge_route")
        return JudgeMetric(judge)
    raise ValueError(f"unknown metric {name!r}")
