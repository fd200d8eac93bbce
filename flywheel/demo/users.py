"""Simulated users of the demo: who asks what, how they read the answer, and what feedback they give.

The questions are the bundled SNIPS sample (`snips_intents.jsonl`, provenance in LICENSE-DATA.md):
350 utterances, each with its gold intent. Traffic walks the sample in a seeded order (a fresh
shuffle each time it runs out), spread over a pool of users. An answer is right when it names
the gold intent and no other; right earns a thumbs-up (`rating: 1`), wrong earns a correction
naming the gold intent with probability `correct_share`, and a thumbs-down (`rating: -1`) otherwise.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

SAMPLE = "snips_intents.jsonl"
USERS = 40  # distinct simulated users; the canary is sticky per user


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    intent: str


@dataclass(frozen=True, slots=True)
class Request:
    """One simulated call: which user asks which utterance."""

    n: int  # 1-based position in the traffic
    user: str
    utterance: Utterance


@dataclass(frozen=True, slots=True)
class Verdict:
    """A user's reading of one answer and the feedback it leads to (the body of POST /v1/feedback)."""

    said: tuple[str, ...]  # the intents the answer names
    right: bool  # it names the gold intent and no other
    feedback: dict[str, Any]


def load_sample() -> tuple[Utterance, ...]:
    """The bundled SNIPS utterances with their gold intents."""
    text = resources.files("flywheel.demo").joinpath(SAMPLE).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return tuple(Utterance(str(r["utterance"]), str(r["intent"])) for r in rows)


def intents(sample: Sequence[Utterance]) -> tuple[str, ...]:
    """The distinct intents, sorted."""
    return tuple(sorted({u.intent for u in sample}))


def traffic(sample: Sequence[Utterance], calls: int, seed: int, users: int = USERS) -> Iterator[Request]:
    """`calls` requests in a seeded order: every utterance once before any repeats."""
    rng = random.Random(seed)
    order: list[Utterance] = []
    for n in range(1, calls + 1):
        if not order:
            order = list(sample)
            rng.shuffle(order)
        yield Request(n, f"demo-user-{rng.randrange(users)}", order.pop())


def named_intents(answer: str, labels: Sequence[str]) -> tuple[str, ...]:
    """The intents `answer` names (exact names, case-insensitive), in order of first mention."""
    found = []
    for label in labels:
        m = re.search(rf"(?<![a-z_]){re.escape(label)}(?![a-z_])", answer.lower())
        if m:
            found.append((m.start(), label))
    return tuple(label for _, label in sorted(found))


class Judge:
    """Turns answers into feedback the way the simulated users do (seeded)."""

    def __init__(self, labels: Sequence[str], correct_share: float, seed: int) -> None:
        if not 0.0 <= correct_share <= 1.0:
            raise ValueError(f"correct_share must be within [0, 1], got {correct_share}")
        self.labels = tuple(labels)
        self.correct_share = correct_share
        self._rng = random.Random(f"judge:{seed}")

    def is_right(self, answer: str, gold: str) -> bool:
        """The answer names the gold intent and no other."""
        return named_intents(answer, self.labels) == (gold,)

    def judge(self, call_id: str, answer: str, gold: str) -> Verdict:
        """Right: thumbs-up. Wrong: a correction (`correct_share` of the time) or a thumbs-down."""
        said = named_intents(answer, self.labels)
        right = said == (gold,)
        body: dict[str, Any] = {"call_id": call_id}
        if right:
            body["rating"] = 1
        elif self._rng.random() < self.correct_share:
            body["correction"] = gold
        else:
            body["rating"] = -1
        return Verdict(said, right, body)
