"""Is a model's answer right? One rule per task shape, forgiving about format, strict about content.

Shapes: ``label`` (binary or many-label classification: the label named first in the answer),
``list`` (extraction: a JSON array of strings, compared as a set after normalising spaces and case),
``short`` (short-answer QA: the first word, any of the gold answers), ``number`` (the first integer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Literal

from bench.real.bigbench import Item

Shape = Literal["label", "list", "short", "number"]
_INT = re.compile(r"[-+−]?\d+")
_WORD = re.compile(r"[a-z]+")


def first_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label mentioned first in `answer` (case, spaces, hyphens and underscores ignored).

    A longer label wins over a shorter one starting at the same place ("tech_support" over "tech").
    """
    flat = re.sub(r"[^a-z0-9]+", "", answer.lower())
    best: tuple[int, int, str] | None = None
    for label in labels:
        pos = flat.find(re.sub(r"[^a-z0-9]+", "", label.lower()))
        if pos >= 0 and (best is None or (pos, -len(label)) < best[:2]):
            best = (pos, -len(label), label)
    return best[2] if best else None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def parse_list(answer: str) -> list[str] | None:
    """The first JSON array of strings or numbers in `answer`, else None (not a list answer)."""
    start = answer.find("[")
    while start >= 0:
        end = answer.find("]", start)
        while end >= 0:
            try:
                value = json.loads(answer[start:end + 1])
            except ValueError:
                end = answer.find("]", end + 1)
                continue
            if isinstance(value, list):
                return [str(v) for v in value if isinstance(v, (str, int, float))]
            break
        start = answer.find("[", start + 1)
    return None


def first_int(answer: str) -> int | None:
    """The first integer written in `answer` (a leading sign counts, "−" included)."""
    m = _INT.search(answer)
    return int(m.group().replace("−", "-")) if m else None


def is_right(shape: Shape, answer: str, item: Item) -> bool:
    """Whether `answer` is right for `item` under the task's `shape`."""
    if shape == "label":
        return first_label(answer, item.choices or [item.target]) == item.target
    if shape == "list":
        got = parse_list(answer)
        gold = item.meta.get("answers", [])
        return got is not None and {_norm(g) for g in got} == {_norm(g) for g in gold}
    if shape == "short":
        words = _WORD.findall(answer.lower())
        return bool(words) and words[0] in set(item.meta.get("answers", [item.target]))
    got_int = first_int(answer)
    return got_int is not None and str(got_int) == item.target


def best_constant(shape: Shape, stream: Sequence[Item], candidates: Sequence[str]) -> tuple[str, float]:
    """The single answer that scores best over `stream` when given to every call, and its accuracy."""
    if not stream:
        return "", 0.0
    best = ("", -1.0)
    for cand in dict.fromkeys(candidates):
        acc = sum(is_right(shape, cand, it) for it in stream) / len(stream)
        if acc > best[1]:
            best = (cand, acc)
    return best
