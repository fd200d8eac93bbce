"""Reading OpenAI chat messages: the text of a content value, of a message, of the last user turn."""

from __future__ import annotations

from typing import Any


def content_text(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a multi-part list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif isinstance(part.get("refusal"), str):
                    parts.append(part["refusal"])
        return "\n".join(parts)
    return ""


def message_text(message: Any) -> str:
    """The text of one chat message ("" for anything that is not a message)."""
    return content_text(message.get("content")) if isinstance(message, dict) else ""


def last_user_index(messages: Any) -> int | None:
    """Index of the last user message, or None."""
    if isinstance(messages, list):
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            if isinstance(m, dict) and m.get("role") == "user":
                return i
    return None


def last_user_text(messages: Any) -> str:
    """The last user message's text ("" when there is none)."""
    i = last_user_index(messages)
    return "" if i is None else message_text(messages[i])


MAX_QUERY_CHARS = 2000  # the head of a long message says what it is about; the rest costs time


def query_text(messages: Any) -> str:
    """What retrieval and the router embed: the last user message, cut to `MAX_QUERY_CHARS`.

    Both use this one text, so the shared embedder's cache answers the second lookup."""
    return last_user_text(messages)[:MAX_QUERY_CHARS]
