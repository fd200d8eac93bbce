"""Simulated in-context learning for the fake model, so learned prompts change its answers.

A real model copies the answer of a worked example whose question resembles the one it is asked,
and follows rules in its system prompt. The fake model does the same, deterministically:

1. Demonstrations are the user/assistant message pairs before the final user message, and the
   "User: …" / "Assistant: …" line pairs inside system messages. The similarity of a
   demonstration to the question is the overlap coefficient of their content-word stems
   (|A ∩ B| / min(|A|, |B|), stop words dropped, plural "s" stripped). When the best one reaches
   `SIMILAR` (0.5) with at least two shared words (one when a side has a single content word),
   the answer is that demonstration's answer, verbatim: correct examples help, wrong ones hurt.
   Ties go to the demonstration nearest the question.
2. Every system-prompt line "Answers about X must mention: Y" whose X occurs in the question
   (plural-insensitive) appends Y to the answer, unless the answer already contains it.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from gateway.messages import message_text

SIMILAR = 0.5
_WORD = re.compile(r"\w[\w'-]*")
_RULE = re.compile(r"Answers about (.+?) must mention:\s*(.+)$", re.IGNORECASE)
_STOP_WORDS = """
a an the and or but if then so of to in on at by for with from about as into is are was were be been
am do does did have has had can could will would should may might must i me my you your he she it its
we our they their this that these those what which who how when where why there here not no yes please
just also very any some get tell know need want like much many more
"""
_STOP = frozenset(_STOP_WORDS.split())


def _stem(word: str) -> str:
    w = word.lower()
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def content_stems(text: str) -> set[str]:
    """Stems of the content words of `text`."""
    return {_stem(w) for w in _WORD.findall(text) if w.lower() not in _STOP}


def similarity(a: set[str], b: set[str]) -> float:
    """Overlap coefficient, 0 unless enough words are shared (see the module docstring)."""
    if not a or not b:
        return 0.0
    shared = len(a & b)
    if shared < min(2, len(a), len(b)):
        return 0.0
    return shared / min(len(a), len(b))


def demonstrations(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(user text, answer) pairs, in prompt order (system-prompt ones first)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    pairs: list[tuple[str, str]] = []
    for m in messages:
        if m.get("role") in ("system", "developer"):
            lines = message_text(m).splitlines()
            for a, b in itertools.pairwise(lines):
                if a.startswith("User: ") and b.startswith("Assistant: "):
                    pairs.append((a[6:], b[11:]))
    for i in range(last_user - 1):
        if messages[i].get("role") == "user" and messages[i + 1].get("role") == "assistant":
            answer = message_text(messages[i + 1])
            if answer:
                pairs.append((message_text(messages[i]), answer))
    return pairs


def imitate(messages: list[dict[str, Any]], question: str) -> str | None:
    """The answer of the demonstration most similar to `question`, if similar enough."""
    q = content_stems(question)
    best: tuple[float, str] | None = None
    for user, answer in demonstrations(messages):
        sim = similarity(q, content_stems(user))
        if sim >= SIMILAR and (best is None or sim >= best[0]):
            best = (sim, answer)
    return best[1] if best else None


def follow_rules(messages: list[dict[str, Any]], question: str, answer: str) -> str:
    """`answer` with what the system prompt's "must mention" rules require for `question`."""
    q = content_stems(question)
    for m in messages:
        if m.get("role") not in ("system", "developer"):
            continue
        for line in message_text(m).splitlines():
            rule = _RULE.search(line)
            if not rule:
                continue
            topic, required = content_stems(rule.group(1)), rule.group(2).strip()
            if topic and topic <= q and required.lower() not in answer.lower():
                answer = f"{answer.rstrip()} {required}".strip()
    return answer
