"""The five tasks of `bench.generalize`: public data from PyPI wheels, five different answer shapes.

| task | shape | data (bench/real/pypi_data.py) |
| --- | --- | --- |
| `polarity` | binary label (positive / negative) | VADER words rated >= 1 from neutral (half the lexicon) |
| `topic` | many-label (14-18 topics) | chatterbot-corpus English openers, at most 40 per topic |
| `quantities` | extraction to a JSON list | quantulum3's test sentences: every quantity as written |
| `nickname` | short-answer QA | nicknames: the formal first name of a nickname (any listed one is right) |
| `valence` | numeric (-4..4) | VADER words' mean rating rounded (the other half of the lexicon) |

None of them is the bundled SNIPS intents, and none comes from OpenAI's evals.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from bench.generalize.scoring import Shape
from bench.real import pypi_data
from bench.real.bigbench import Item

TOPIC_CAP = 40  # openers per topic: trivia alone has 261, which would make "trivia" a strong constant


@dataclass(frozen=True)
class Task:
    """One benchmark task: the seed instruction (template t0), the labelled pool and how to score."""

    name: str
    shape: Shape
    instruction: str
    pool: tuple[Item, ...]
    max_tokens: int  # answers are short; this bounds a rambling model's cost
    constants: tuple[str, ...]  # candidate constant answers (the best one is the baseline)

    def stream(self, calls: int, seed: int) -> list[Item]:
        """The pass: `calls` items of a seeded shuffle of the pool (each item once)."""
        return random.Random(seed).sample(list(self.pool), min(calls, len(self.pool)))


def _vader_halves(seed: int) -> tuple[list[Item], list[Item]]:
    """The lexicon split in two disjoint seeded halves, so `polarity` and `valence` share no word."""
    words = pypi_data.vader_words()
    random.Random(seed).shuffle(words)
    return words[::2], words[1::2]


def polarity(seed: int) -> Task:
    """Binary: is the word positive or negative (people's mean rating at least 1 from neutral)."""
    half, _ = _vader_halves(seed)
    items = tuple(Item(it.input, "positive" if it.meta["mean"] > 0 else "negative", ["positive", "negative"],
                       dict(it.meta)) for it in half if abs(it.meta["mean"]) >= 1.0)
    return Task("polarity", "label",
                "Decide whether the word or emoticon is positive or negative in sentiment. "
                "Answer with one word: positive or negative.\n", items, 4, ("positive", "negative"))


def topic(seed: int) -> Task:
    """Many-label: the topic a chat message belongs to."""
    by_topic: dict[str, list[Item]] = {}
    for it in pypi_data.chatterbot_topics():
        by_topic.setdefault(it.target, []).append(it)
    rng = random.Random(seed)
    items = tuple(it for t in sorted(by_topic) for it in rng.sample(by_topic[t], min(TOPIC_CAP, len(by_topic[t]))))
    labels = sorted(by_topic)
    return Task("topic", "label",
                "Classify the chat message into one topic. Topics: " + ", ".join(labels) + ". "
                "Answer with the topic name only.\n", items, 6, tuple(labels))


def quantities(seed: int) -> Task:
    """Extraction: every quantity in a sentence, as written, as a JSON array of strings."""
    items = tuple(pypi_data.quantulum_sentences())
    return Task("quantities", "list",
                "List every quantity (a number with its unit, if any) in the text exactly as written. "
                'Answer with a JSON array of strings only, e.g. ["2 kg", "5 km"].\n', items, 48,
                ("[]", *tuple(dict.fromkeys(it.target for it in items))))


def nickname(seed: int) -> Task:
    """Short-answer QA: the formal first name a nickname stands for."""
    items = tuple(pypi_data.nickname_pairs())
    return Task("nickname", "short",
                "Give the formal English first name that the nickname is short for. "
                "Answer with the name only, in lower case.\n", items, 6,
                tuple(dict.fromkeys(n for it in items for n in it.meta["answers"])))


def valence(seed: int) -> Task:
    """Numeric: how positive or negative a word is, as an integer from -4 to 4."""
    _, half = _vader_halves(seed)
    return Task("valence", "number",
                "Rate the sentiment of the word or emoticon on a scale from -4 (very negative) to 4 "
                "(very positive), 0 being neutral. Answer with one integer only.\n", tuple(half), 4,
                tuple(str(v) for v in range(-4, 5)))


TASKS: dict[str, Callable[[int], Task]] = {
    "polarity": polarity, "topic": topic, "quantities": quantities, "nickname": nickname, "valence": valence,
}
