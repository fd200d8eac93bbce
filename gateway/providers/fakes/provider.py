"""A deterministic fake LLM: the `fake` provider kind, and the engine behind the fake HTTP upstream.

Behaviour, all deterministic for a given request and seed:
- a scripted reply when a configured substring occurs in the last user message;
- with `tools` offered (and `tool_choice` not "none") and a user message last: a call to the
  first (or the forced) tool, with arguments generated from its JSON schema;
- after a `tool` message: "The tool returned: <content>";
- `response_format` json_object: `{"answer": …}`; json_schema: an instance of the schema;
- otherwise an echo: "You said: <last user message>";
- simulated in-context learning (fake_icl.py), before scripted replies and the echo: the answer
  of a few-shot demonstration whose question resembles the last user message, and system-prompt
  rules "Answers about X must mention: Y" followed when the question mentions X;
- a model that finds a request too hard: when the last user message contains one of the
  configured `hard` substrings, the text answer is `hard_reply` (over scripted replies and
  response formats; tool calls are unaffected): a benchmark's cheap model that fails hard requests;
- `n` choices, `logprobs` when asked, usage counted as ~4 characters per token;
- embeddings: unit vectors from a hash of the input (strings or token-id arrays), float or base64.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.messages import last_user_text, message_text
from gateway.providers.base import Body, UpstreamCall, UpstreamError, UpstreamResponse
from gateway.providers.fakes import responses as fake_responses
from gateway.providers.fakes.icl import follow_rules, imitate

EMBED_DIM = 64
HARD_REPLY = "Sorry, I cannot answer that reliably."


def count_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


def instance_of(schema: Body, depth: int = 0) -> Any:
    """A small valid instance of a JSON schema (the common subset structured outputs use)."""
    if depth > 6:
        return None
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return instance_of(schema[union][0], depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: instance_of(v, depth + 1) for k, v in props.items()}
    if kind == "array":
        item = schema.get("items")
        return [instance_of(item, depth + 1)] if isinstance(item, dict) else []
    return {"string": "example", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind)


class FakeEngine:
    """Produces OpenAI-shaped responses and stream chunks for a request body."""

    def __init__(
        self, *, replies: dict[str, str] | None = None, seed: int = 0,
        hard: tuple[str, ...] | list[str] = (), hard_reply: str = HARD_REPLY,
    ) -> None:
        self.replies = replies or {}
        self.seed = seed
        self.hard = tuple(hard)
        self.hard_reply = hard_reply

    def finds_hard(self, body: Body) -> bool:
        """True when the last user message holds one of the `hard` substrings."""
        if not self.hard:
            return False
        user = last_user_text(body.get("messages") or [])
        return any(h in user for h in self.hard)

    def _tool_call(self, body: Body, index: int) -> Body | None:
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        messages = body.get("messages") or []
        if not tools or choice == "none" or not messages or messages[-1].get("role") != "user":
            return None
        tool = tools[0]
        if isinstance(choice, dict):
            wanted = choice.get("function", {}).get("name")
            tool = next((t for t in tools if t.get("function", {}).get("name") == wanted), tool)
        fn = tool.get("function", {})
        args = instance_of(fn.get("parameters") or {"type": "object"})
        digest = hashlib.sha256(orjson.dumps(messages) + bytes([index])).hexdigest()[:24]
        return {
            "id": f"call_{digest}",
            "type": "function",
            "function": {"name": fn.get("name", "tool"), "arguments": orjson.dumps(args).decode()},
        }

    def _content(self, body: Body) -> str:
        if self.finds_hard(body):
            return self.hard_reply
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        fmt = body.get("response_format") or {}
        if last.get("role") == "tool":
            text = f"The tool returned: {message_text(last)}"
        else:
            user = last_user_text(messages)
            # In-context learning (fake_icl.py): a similar demonstration's answer, then the rules.
            text = imitate(messages, user) or next((r for k, r in self.replies.items() if k in user),
                                                   f"You said: {user}")
            text = follow_rules(messages, user, text)
        if fmt.get("type") == "json_object":
            return orjson.dumps({"answer": text}).decode()
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            return orjson.dumps(instance_of(schema)).decode()
        return text

    def _logprobs(self, content: str) -> Body:
        tokens = content.split(" ")
        return {
            "content": [
                {"token": t, "logprob": -0.01, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens
            ],
            "refusal": None,
        }

    def usage(self, body: Body, completion: str) -> Body:
        prompt = sum(count_tokens(message_text(m)) + 3 for m in body.get("messages") or [])
        done = count_tokens(completion)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def complete(self, body: Body) -> Body:
        """A full `chat.completion` object."""
        n = int(body.get("n") or 1)
        choices = []
        generated = ""
        for i in range(n):
            call = self._tool_call(body, i)
            content = None if call else self._content(body)
            generated += content or (call["function"]["arguments"] if call else "")
            message: Body = {"role": "assistant", "content": content, "refusal": None}
            if call:
                message["tool_calls"] = [call]
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": self._logprobs(content or "") if body.get("logprobs") else None,
                    "finish_reason": "tool_calls" if call else "stop",
                }
            )
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": self.usage(body, generated),
            "system_fingerprint": "fp_fake",
        }

    def chunks(self, body: Body) -> list[Body]:
        """The same answer as `complete`, as the `chat.completion.chunk`s a stream carries."""
        full = self.complete(body)
        base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"],
                "model": full["model"], "system_fingerprint": "fp_fake"}
        out: list[Body] = []
        for choice in full["choices"]:
            i = choice["index"]
            msg = choice["message"]
            out.append({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
            if msg.get("tool_calls"):
                call = msg["tool_calls"][0]
                args = call["function"]["arguments"]
                head = {"index": 0, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                out.append({**base, "choices": [{"index": i, "delta": {"tool_calls": [head]},
                                                 "logprobs": None, "finish_reason": None}]})
                for start in range(0, len(args), 8):
                    piece = {"index": 0, "function": {"arguments": args[start:start + 8]}}
                    out.append({**base, "choices": [{"index": i, "delta": {"tool_calls": [piece]},
                                                     "logprobs": None, "finish_reason": None}]})
            else:
                words = (msg.get("content") or "").split(" ")
                for j, word in enumerate(words):
                    text = word if j == 0 else " " + word
                    out.append({**base, "choices": [{"index": i, "delta": {"content": text},
                                                     "logprobs": None, "finish_reason": None}]})
            out.append({**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                             "finish_reason": choice["finish_reason"]}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append({**base, "choices": [], "usage": full["usage"]})
        return out

    def embed(self, body: Body) -> Body:
        """An `embeddings` list response; deterministic unit vectors."""
        raw = body.get("input")
        inputs: list[Any] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        as_b64 = body.get("encoding_format") == "base64"
        dim = int(body.get("dimensions") or EMBED_DIM)
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            key = orjson.dumps(item)
            tokens += len(item) if isinstance(item, list) else count_tokens(str(item))
            rng = random.Random(hashlib.sha256(key + str(self.seed).encode()).digest())
            vec = [rng.gauss(0, 1) for _ in range(dim)]
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            vec = [v / norm for v in vec]
            emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if as_b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": body.get("model", "fake"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class FakeProvider:
    """The in-process `fake` provider: the engine plus configurable latency and error rate."""

    def __init__(
        self,
        name: str,
        *,
        latency_ms: float = 0.0,
        error_rate: float = 0.0,
        seed: int = 0,
        replies: dict[str, str] | None = None,
        hard: tuple[str, ...] | list[str] = (),
        hard_reply: str = HARD_REPLY,
        engine: FakeEngine | None = None,
        responses: str = "translate",
    ) -> None:
        self.name = name
        self.speaks_responses = responses == "native"
        self.timeout_s: float | None = None  # the simulated upstream is bounded by the retries' budget only
        self.latency_s = latency_ms / 1000
        self.error_rate = error_rate
        self.engine = engine or FakeEngine(replies=replies, seed=seed, hard=hard, hard_reply=hard_reply)
        self._rng = random.Random(seed)

    async def _behave(self) -> None:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.error_rate and self._rng.random() < self.error_rate:
            raise UpstreamError("fake provider: injected server error", status=500)

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        await self._behave()
        return UpstreamResponse(self.engine.complete(call.body), {})

    async def chat_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        await self._behave()
        for chunk in self.engine.chunks(call.body):
            yield [chunk]

    async def embeddings(self, call: UpstreamCall) -> UpstreamResponse:
        await self._behave()
        return UpstreamResponse(self.engine.embed(call.body), {})

    async def responses(self, call: UpstreamCall) -> UpstreamResponse:
        await self._behave()
        return UpstreamResponse(fake_responses.complete(self.engine.complete, call.body), {})

    async def responses_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        await self._behave()
        for event in fake_responses.events(self.engine.complete, call.body):
            yield [event]

    async def aclose(self) -> None:
        return None
