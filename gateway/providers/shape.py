"""Checks that an upstream's answer is what it claims to be before it is relayed or logged as success.

An upstream that answers 200 with a JSON array, with `{"error": …}` or with some other JSON
object has failed, whatever its status line says: each such answer becomes an UpstreamError with
status 502, so the attempt is logged with its reason, retried or failed over like any 5xx, and
the client gets an OpenAI-shaped 502 instead of a broken "success".
"""

from __future__ import annotations

from typing import Any

from gateway.providers.base import UpstreamError

_JSON_KINDS: dict[type, str] = {dict: "object", list: "array", str: "string"}


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _error_in(body: dict[str, Any]) -> UpstreamError | None:
    err = body.get("error")
    if err is None:
        return None
    message = err.get("message") if isinstance(err, dict) else err
    return UpstreamError(f"upstream answered 200 with an error: {str(message)[:500]}", status=502)


def check_chat(body: Any) -> None:
    """Raise UpstreamError(502) unless `body` is a `chat.completion`: an object whose `choices` is a
    non-empty list of objects each holding a `message` object."""
    if not isinstance(body, dict):
        raise UpstreamError(f"upstream answered with a JSON {_kind(body)} instead of a chat completion", status=502)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _error_in(body) or UpstreamError("upstream answer is not a chat completion (no choices)", status=502)
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise UpstreamError("upstream answer is not a chat completion (a choice without a message)", status=502)


def check_response(body: Any) -> None:
    """Raise UpstreamError(502) unless `body` is a finished Responses API `response`: an object whose
    `output` is a list of objects (a `failed` response is a failure whatever the status line says)."""
    if not isinstance(body, dict):
        raise UpstreamError(f"upstream answered with a JSON {_kind(body)} instead of a response", status=502)
    output = body.get("output")
    if body.get("object") != "response" or not isinstance(output, list):
        raise _error_in(body) or UpstreamError("upstream answer is not a Responses API response", status=502)
    if not all(isinstance(item, dict) for item in output):
        raise UpstreamError("upstream answer is not a Responses API response (an output item is no object)",
                            status=502)
    if body.get("status") == "failed":
        raise _error_in(body) or UpstreamError("upstream response failed", status=502)


def check_embeddings(body: Any) -> None:
    """Raise UpstreamError(502) unless `body` is an embeddings list: an object whose `data` is a list."""
    if not isinstance(body, dict):
        raise UpstreamError(f"upstream answered with a JSON {_kind(body)} instead of embeddings", status=502)
    if not isinstance(body.get("data"), list):
        raise _error_in(body) or UpstreamError("upstream answer is not an embeddings list (no data)", status=502)
