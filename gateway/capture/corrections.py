"""Text of stored chat requests/responses, and the readable diff between an answer and its correction.

`response_text` and `content_text` turn OpenAI-shaped JSON into plain text (the learners, the
feedback API and implicit-signal detection all need "what did the assistant say");
`correction_diff` is what `FeedbackRecord.correction_diff` holds.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from typing import Literal

from gateway.messages import content_text
from gateway.store.records import JSON

# Sentence ends inside a long line: a one-sentence change then shows as one changed line.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_SPLIT_LINES_OVER = 120


def response_text(response_json: JSON) -> str:
    """The assistant text of a stored chat response: the first choice's content (or refusal), and
    its tool calls rendered compactly, one per line, as `-> name({"arg": ...})`.

    Accepts the body as a dict or a JSON string; anything unrecognisable gives "".
    """
    body = response_json
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return ""
    if not isinstance(body, dict):
        return ""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        # Legacy completions and odd providers put the text on the choice itself.
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    lines: list[str] = []
    text = content_text(message.get("content"))
    if not text and isinstance(message.get("refusal"), str):
        text = message["refusal"]
    if text:
        lines.append(text)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        lines.extend(_render_call(call.get("function")) for call in calls if isinstance(call, dict))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        lines.append(_render_call(legacy))
    return "\n".join(lines)


def _render_call(function: JSON) -> str:
    if not isinstance(function, dict):
        return "-> ?()"
    name = function.get("name") or "?"
    args = function.get("arguments")
    if isinstance(args, str):
        # A truncated (unparsable) argument string is shown as it is.
        with contextlib.suppress(ValueError):
            args = json.dumps(json.loads(args), ensure_ascii=False, separators=(", ", ": "))
    elif args is not None:
        args = json.dumps(args, ensure_ascii=False, separators=(", ", ": "))
    return f"-> {name}({args or ''})"


def correction_diff(response_text: str, correction: str, *, by: Literal["line", "word"] = "line") -> str:
    """A readable diff from the response to the user's correction; "" when they are equal.

    `by="line"`: a unified diff (`--- response` / `+++ correction`, 2 lines of context), long lines
    split at sentence ends first. `by="word"`: one line (whitespace collapsed), git's plain word-diff
    style: `keep [-removed-]{+added+} keep`.
    """
    if response_text == correction:
        return ""
    if by == "word":
        return _word_diff(response_text, correction)
    diff = difflib.unified_diff(
        _lines(response_text), _lines(correction), "response", "correction", n=2, lineterm=""
    )
    return "\n".join(diff)


def _lines(text: str) -> list[str]:
    out: list[str] = []
    for line in text.splitlines() or [""]:
        if len(line) > _SPLIT_LINES_OVER:
            out.extend(_SENTENCE_END.split(line))
        else:
            out.append(line)
    return out


def _word_diff(a: str, b: str) -> str:
    wa, wb = a.split(), b.split()
    pieces: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.extend(wa[i1:i2])
            continue
        marked = ""
        if i2 > i1:
            marked += f"[-{' '.join(wa[i1:i2])}-]"
        if j2 > j1:
            marked += f"{{+{' '.join(wb[j1:j2])}+}}"
        pieces.append(marked)
    return " ".join(pieces)
