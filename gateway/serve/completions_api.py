"""Legacy text completions (POST /v1/completions) translated to and from chat completions.

The prompt becomes one user message and goes through the same pipeline as a chat call; the chat
answer becomes a `text_completion` (streamed: `text_completion` chunks, then `[DONE]`). One
prompt per request: a batch of prompts, token-id prompts, `suffix` and `best_of` > 1 have no chat
equivalent and are refused with a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import InvalidRequest

Body = dict[str, Any]

# Fields with the same meaning in chat completions: passed on as they are.
_SAME_IN_CHAT = ("max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
                 "seed", "user", "logit_bias", "stream", "stream_options", "service_tier")


def _prompt(body: Body) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise InvalidRequest("This gateway translates one prompt per request to chat: send the prompts "
                             "as separate requests.", param="prompt")
    raise InvalidRequest("'prompt' must be a string (token-id prompts have no chat equivalent).", param="prompt")


def to_chat(body: Body) -> Body:
    """The chat body for a legacy completion request; 400 naming the field it cannot translate."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    prompt = _prompt(body)
    if body.get("suffix"):
        raise InvalidRequest("'suffix' (insertion) has no chat equivalent.", param="suffix")
    if body.get("best_of") not in (None, 1):
        raise InvalidRequest("'best_of' > 1 has no chat equivalent.", param="best_of")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    chat: Body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    for key in _SAME_IN_CHAT:
        if body.get(key) is not None:
            chat[key] = body[key]
    logprobs = body.get("logprobs")
    if isinstance(logprobs, int) and not isinstance(logprobs, bool) and logprobs >= 0:
        chat["logprobs"] = True
        chat["top_logprobs"] = logprobs
    return chat


def _logprobs(chat_logprobs: Any) -> Body | None:
    """Chat logprobs in the legacy shape (tokens, token_logprobs, top_logprobs, text_offset)."""
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    if not isinstance(content, list):
        return None
    offset, offsets = 0, []
    for t in content:
        offsets.append(offset)
        offset += len(t.get("token", ""))
    return {"tokens": [t.get("token", "") for t in content],
            "token_logprobs": [t.get("logprob") for t in content],
            "top_logprobs": [{x["token"]: x["logprob"] for x in t.get("top_logprobs") or ()} for t in content],
            "text_offset": offsets}


def from_chat(body: Body, completion: Body) -> Body:
    """The `text_completion` for a chat completion (`echo` puts the prompt in front of the text)."""
    prefix = _prompt(body) if body.get("echo") else ""
    choices = []
    for ch in completion.get("choices") or ():
        message = ch.get("message") or {}
        choices.append({"text": prefix + (message.get("content") or ""), "index": ch.get("index", 0),
                        "logprobs": _logprobs(ch.get("logprobs")), "finish_reason": ch.get("finish_reason") or "stop"})
    out: Body = {"id": completion.get("id"), "object": "text_completion", "created": completion.get("created"),
                 "model": completion.get("model"), "choices": choices}
    if completion.get("system_fingerprint"):
        out["system_fingerprint"] = completion["system_fingerprint"]
    if completion.get("usage"):
        out["usage"] = completion["usage"]
    return out


def _chunk(chunk: Body, prefix: str, echoed: set[int]) -> Body:
    choices = []
    for ch in chunk.get("choices") or ():
        index = ch.get("index", 0)
        text = (ch.get("delta") or {}).get("content") or ""
        if prefix and index not in echoed:
            echoed.add(index)
            text = prefix + text
        choices.append({"text": text, "index": index, "logprobs": _logprobs(ch.get("logprobs")),
                        "finish_reason": ch.get("finish_reason")})
    out: Body = {"id": chunk.get("id"), "object": "text_completion", "created": chunk.get("created"),
                 "model": chunk.get("model"), "choices": choices}
    if "usage" in chunk:
        out["usage"] = chunk["usage"]
    return out


async def render_stream(body: Body, chat: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The pipeline's chat stream (`data: {chunk}` events) as `text_completion` events."""
    prefix = _prompt(body) if body.get("echo") else ""
    echoed: set[int] = set()
    try:
        async for raw in chat:
            out: list[bytes] = []
            for event in raw.split(b"\n\n"):
                if not event.startswith(b"data: "):
                    continue
                payload = event[6:]
                if payload == b"[DONE]" or payload.startswith(b'{"error"'):
                    out.append(event + b"\n\n")  # the end, or the error event, as they are
                    continue
                out.append(b"data: " + orjson.dumps(_chunk(orjson.loads(payload), prefix, echoed)) + b"\n\n")
            if out:
                yield b"".join(out)
    finally:
        close = getattr(chat, "aclose", None)
        if close is not None:  # the pipeline's stream logs the call when it closes: now, not when collected
            await close()
