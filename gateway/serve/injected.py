"""What the augmenter injected into a stored call, undone: the client's own messages and the examples.

The augmenter (gateway/serve/augment.py) prepends one system message when a template version is
recorded and inserts two messages per retrieved example just before the final user message; a
stored call records both (`template_version`, `retrieved_ids`), so both are undone exactly here.
The learners, the routing featuriser and the explanations all read stored calls through this.
"""

from __future__ import annotations

from typing import Any

from gateway.messages import message_text
from gateway.store.records import CallRecord


def _undo_augmentation(rec: CallRecord) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(client messages, injected example messages) of a stored call, or None when it can't be undone.

    The augmenter prepends one system message when a template version is recorded and inserts
    two messages per retrieved example just before the final user message, so both are undone
    exactly from `template_version` and `retrieved_ids`.
    """
    req = rec.request
    if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
        return None
    msgs = [m for m in req["messages"] if isinstance(m, dict)]
    if rec.template_version and msgs and msgs[0].get("role") == "system":
        msgs = msgs[1:]
    n = 2 * len(rec.retrieved_ids)
    if not n:
        return msgs, []
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
    if last is None or last < n:
        return None
    return msgs[: last - n] + msgs[last:], msgs[last - n : last]


def client_messages(rec: CallRecord) -> list[dict[str, Any]] | None:
    """The messages the client sent: the stored request minus what the augmenter injected."""
    split = _undo_augmentation(rec)
    return None if split is None else split[0]


def injected_examples(rec: CallRecord) -> list[tuple[str, str]]:
    """The (input, output) examples retrieval injected into a stored call, the one closest to the
    question first (the nearest, unless the index's `order` put the agreeing ones there)."""
    split = _undo_augmentation(rec)
    if split is None:
        return []
    shots = split[1]
    pairs = [(message_text(shots[i]), message_text(shots[i + 1])) for i in range(0, len(shots) - 1, 2)]
    return pairs[::-1]  # the augmenter puts the first listed example last, next to the question
