"""How large a stored request or response may be.

A stored request or response larger than `max_stored_bytes` of JSON keeps its shape: a chat
request keeps its newest messages that fit (the ones a learner looks at), and any string still too
long is cut, with a marker saying how long it was; the row's `notes` give the original size and
the number of messages left out. (No marker key goes into the JSON itself: learners replay stored
requests upstream, and an unknown field could be refused there.)
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.store.records import JSON


def json_size(value: JSON) -> int:
    """Bytes of `value` as compact JSON."""
    return len(orjson.dumps(value, default=str))


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated by flywheel: {len(text)} characters]"


def _cut_strings(value: JSON, limit: int) -> JSON:
    if isinstance(value, str):
        return _cut(value, limit)
    if isinstance(value, dict):
        return {k: _cut_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, limit) for v in value]
    return value


def cap(value: JSON, max_bytes: int) -> tuple[JSON, str | None]:
    """`value` cut to about `max_bytes` of JSON; (value, a note such as "8123456 bytes, 59990
    messages left out" when it was cut, else None)."""
    if value is None:
        return value, None
    size = json_size(value)
    if size <= max_bytes:
        return value, None
    note = f"{size} bytes"
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        messages = value["messages"]
        budget = max_bytes * 3 // 4
        kept: list[Any] = []
        for message in reversed(messages):  # newest first: what a learner and a replay look at
            n = json_size(message)
            if n > budget:
                if not kept:  # even the last message alone is too long: keep it, cut
                    kept.append(_cut_strings(message, max(256, budget // 2)))
                break
            kept.append(message)
            budget -= n
        kept.reverse()
        note += f", {len(messages) - len(kept)} messages left out"
        out: JSON = {**value, "messages": kept}
    else:
        out = _cut_strings(value, max(256, max_bytes // 4))
    # Whatever shape is left over (huge tool definitions, many choices): strings get cut harder.
    limit = max(256, max_bytes // 8)
    while json_size(out) > max_bytes and limit > 64:
        out = _cut_strings(out, limit)
        limit //= 4
    return out, note
