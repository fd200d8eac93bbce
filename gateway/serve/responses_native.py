"""The Responses API passed through to upstreams that speak it (`[providers.X] responses = "native"`).

A Responses request still goes through the chat pipeline (route, policy and learned routing,
template and retrieval, retries and fallbacks, capture): the pipeline works on the translated chat
body (gateway/serve/responses_api.py), and only the provider call changes. `NativeResponses` is
the pipeline's `Via` for one request: for a provider that speaks Responses it hands out an adapter
that rebuilds a Responses request from what the pipeline would send —

- the learned template (a system message the augmenter put first) joins the request's
  `instructions`; retrieved examples become message items before the last user message;
- Flywheel's own `previous_response_id` state is expanded into `input` (Flywheel's ids mean
  nothing upstream), and `store: false` is sent: the conversation lives in Flywheel;
- the target's model and its configured parameters apply, named the Responses way —

and turns the upstream's answer (or its events) back into a chat completion (or chunks) for the
pipeline, so the call is checked, logged, priced and learned from exactly like a translated one.
The upstream's own answer is kept for the client: `answer_for` (non-streamed) and `relay`
(streamed: the upstream's events as they come, with Flywheel's response id). A provider that
does not speak Responses gets the chat body as usual: a fallback from a native provider to a
chat-only one translates.

The augmenter only inserts messages (gateway/serve/augment.py): the request's own messages keep
their order, so whatever else the pipeline sends was injected — system messages before the first
own message are the template, the rest retrieved examples.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.messages import content_text
from gateway.providers.base import (
    TERMINAL_EVENTS,
    Body,
    Provider,
    ResponsesProvider,
    UpstreamCall,
    UpstreamError,
    UpstreamResponse,
)
from gateway.providers.shape import check_response
from gateway.serve.responses_api import ResponsesRequest

# Chat parameters a target may configure that the Responses API also takes, under its names; the
# others (n, stop, seed, penalties, logprobs) have no Responses equivalent and are not sent.
_RENAMED = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}
_SAME_IN_RESPONSES = frozenset({"temperature", "top_p", "parallel_tool_calls", "user", "prompt_cache_key",
                                "safety_identifier", "service_tier"})
# Request fields that are Flywheel's, not the upstream's (rebuilt by `upstream_body`).
_OWN = frozenset({"model", "input", "instructions", "previous_response_id", "store", "stream"})


def _upstream_item(item: Body) -> Body | None:
    """A stored conversation item as input for an upstream that keeps no state: its ids are
    Flywheel's or another upstream's, and a reasoning item without its encrypted content is a
    reference the upstream cannot resolve."""
    if item.get("type") == "reasoning":
        return item if item.get("encrypted_content") else None
    return {k: v for k, v in item.items() if k not in ("id", "status")}


def chat_answer(response: Body) -> Body:
    """A `response` object as the chat completion the pipeline logs (text, refusal, tool calls, usage)."""
    texts: list[str] = []
    refusal: str | None = None
    calls: list[Body] = []
    for item in response.get("output") or ():
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusal = (refusal or "") + (part.get("refusal") or "")
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}})
    message: Body = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                     "refusal": refusal}
    if calls:
        message["tool_calls"] = calls
    return {"id": response.get("id"), "object": "chat.completion", "created": response.get("created_at"),
            "model": response.get("model"),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _finish_reason(response, bool(calls))}],
            "usage": chat_usage(response.get("usage"))}


def _finish_reason(response: Body, called: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


def chat_usage(usage: Body | None) -> Body | None:
    """Responses usage in the chat shape (what pricing and the call log read)."""
    if not usage:
        return None
    prompt, done = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0)
    total = usage.get("total_tokens") or prompt + done
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": total,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


class NativeResponses:
    """One Responses request's way to its providers; the upstream's own answer, once served."""

    def __init__(self, req: ResponsesRequest, history: list[Body], chat: Body, call_id: str) -> None:
        self.req = req
        self.history = history
        self.chat = chat  # the translated body the pipeline plans with
        self.call_id = call_id
        self.streamed = False  # a native stream served its first events
        self.pending: list[Body] = []  # upstream events not yet relayed to the client
        self.final: Body | None = None  # the terminal event's response (client view)
        self.snapshot: Body | None = None  # the newest response object an event carried (client view)
        self.terminal = False  # the upstream sent response.completed / .incomplete / .failed
        self.next_seq = 0  # the sequence number after the upstream's last event
        self._served: tuple[Body, Body] | None = None  # (chat answer handed to the pipeline, raw response)

    def __call__(self, provider: Provider) -> Provider:
        """The pipeline's `Via`: an adapter for providers that speak Responses, else the provider."""
        if isinstance(provider, ResponsesProvider) and provider.speaks_responses:
            return _Adapter(self, provider, provider)
        return provider

    # -- request -----------------------------------------------------------------------------
    def upstream_body(self, sent: Body, *, stream: bool) -> Body:
        """The Responses request for the chat body `sent` (augmented, aimed at the target's model)."""
        own: list[Body] = self.chat["messages"]
        template: list[str] = []
        examples: list[Body] = []
        j = 0  # the next of the request's own messages, which keep their order
        for m in sent["messages"]:
            if j < len(own) and (m is own[j] or m == own[j]):
                j += 1
            elif j == 0 and m.get("role") == "system":
                template.append(content_text(m.get("content")))
            else:
                examples.append({"type": "message", "role": m.get("role", "user"),
                                 "content": content_text(m.get("content"))})
        items = [i for i in (_upstream_item(h) for h in self.history) if i is not None]
        items += self.req.input_items
        if examples:
            last_user = max((n for n, i in enumerate(items) if i.get("type", "message") == "message"
                             and i.get("role") == "user"), default=len(items))
            items = items[:last_user] + examples + items[last_user:]
        body = {k: v for k, v in self.req.body.items() if k not in _OWN}
        for key, value in sent.items():  # the target's configured parameters (the request's win)
            if key not in self.chat and (key in _RENAMED or key in _SAME_IN_RESPONSES):
                body.setdefault(_RENAMED.get(key, key), value)
        if "reasoning_effort" in sent and "reasoning_effort" not in self.chat:
            body.setdefault("reasoning", {"effort": sent["reasoning_effort"]})
        body.update(model=sent["model"], input=items, store=False)
        instructions = "\n\n".join([*template, *([self.req.instructions] if self.req.instructions else [])])
        if instructions:
            body["instructions"] = instructions
        if stream:
            body["stream"] = True
        return body

    # -- answer ------------------------------------------------------------------------------
    def client_view(self, response: Body) -> Body:
        """The upstream's response object as the client sees it: Flywheel's id, state and instructions."""
        return {**response, "id": self.call_id, "previous_response_id": self.req.previous_response_id,
                "store": self.req.store, "instructions": self.req.instructions,
                "metadata": self.req.metadata}

    def served(self, answer: Body, raw: Body) -> None:
        self._served = (answer, raw)

    def answer_for(self, out: Body) -> Body | None:
        """The upstream's response (client view) when `out` is the answer a native provider gave;
        None when the pipeline served another provider's chat answer (a fallback, an escalation)."""
        if self._served is None or self._served[0] is not out:
            return None
        return self.client_view(self._served[1])

    def event_bytes(self, event: Body) -> bytes:
        """One upstream event as the client gets it (a response snapshot in Flywheel's view)."""
        if isinstance(event.get("response"), dict):
            event = {**event, "response": self.client_view(event["response"])}
            self.snapshot = event["response"]
            if event["type"] in TERMINAL_EVENTS:
                self.final, self.terminal = event["response"], True
        return b"event: " + str(event.get("type")).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def fail_events(self, error: Body) -> bytes:
        """`error` then `response.failed`, for a stream that broke without the upstream saying why."""
        err = error.get("error") or {}
        seq = self.next_seq
        last = self.snapshot or self.client_view({"object": "response", "output": [], "model": self.req.model})
        self.final = {**last, "status": "failed", "completed_at": None,
                      "error": {"code": "server_error", "message": err.get("message", "")}}
        # `error` as OpenAI sends it, plus the envelope the SDKs raise on (as responses_stream.py does)
        error_event = {"type": "error", "sequence_number": seq, "code": err.get("code"),
                       "message": err.get("message", ""), "param": err.get("param"), "error": err}
        failed = {"type": "response.failed", "sequence_number": seq + 1, "response": self.final}
        return (b"event: error\ndata: " + orjson.dumps(error_event) + b"\n\n"
                + b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n")


class _Adapter:
    """A Responses-speaking provider seen by the pipeline as a chat provider, for one request."""

    def __init__(self, native: NativeResponses, provider: Provider, api: ResponsesProvider) -> None:
        self._native = native
        self._provider = provider
        self._api = api  # the same object, seen through its Responses methods
        self.name = provider.name
        self.timeout_s = provider.timeout_s

    def _call(self, call: UpstreamCall, *, stream: bool) -> UpstreamCall:
        return UpstreamCall(self._native.upstream_body(call.body, stream=stream), call.timeout_s,
                            call.max_response_bytes, call.received_headers)

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        resp = await self._api.responses(self._call(call, stream=False))
        check_response(resp.body)
        answer = chat_answer(resp.body)
        self._native.served(answer, resp.body)
        return UpstreamResponse(answer, resp.headers)

    async def chat_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        native = self._native
        chunks = _ChunkMaker()
        events = self._api.responses_stream(self._call(call, stream=True))
        try:
            async for group in events:
                group_chunks: list[Body] = []
                for event in group:
                    native.pending.append(event)
                    native.next_seq = max(native.next_seq, int(event.get("sequence_number") or 0) + 1)
                    group_chunks += chunks.of(event)
                native.streamed = True
                yield group_chunks or [chunks.placeholder()]
                failed = next((e for e in group if e.get("type") == "response.failed"), None)
                if failed is not None:
                    err = (failed.get("response") or {}).get("error") or {}
                    raise UpstreamError(f"upstream response failed: {err.get('message', '')}", status=502)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    async def embeddings(self, call: UpstreamCall) -> UpstreamResponse:
        return await self._provider.embeddings(call)

    async def aclose(self) -> None:
        return None  # the provider's connections belong to the runtime


class _ChunkMaker:
    """Responses events as the chat chunks the pipeline's stream assembler and TTFT read."""

    def __init__(self) -> None:
        self.model: str | None = None
        self._tools: dict[str, int] = {}  # function-call item id -> chat tool-call index

    def _chunk(self, delta: Body | None = None, finish: str | None = None, usage: Body | None = None) -> Body:
        chunk: Body = {"object": "chat.completion.chunk", "model": self.model,
                       "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def placeholder(self) -> Body:
        return self._chunk()

    def of(self, event: Body) -> list[Body]:
        kind = event.get("type")
        response = event.get("response")
        if isinstance(response, dict) and self.model is None:
            self.model = response.get("model")
        if kind == "response.output_text.delta":
            return [self._chunk({"content": event.get("delta", "")})]
        if kind == "response.refusal.delta":
            return [self._chunk({"refusal": event.get("delta", "")})]
        item = event.get("item")
        if kind == "response.output_item.added" and isinstance(item, dict) and item.get("type") == "function_call":
            index = self._tools[str(item.get("id"))] = len(self._tools)
            call = {"index": index, "id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "response.function_call_arguments.delta":
            index = self._tools.get(str(event.get("item_id")), 0)
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": event.get("delta", "")}}]})]
        if kind in ("response.completed", "response.incomplete") and isinstance(response, dict):
            finish = _finish_reason(response, bool(self._tools))
            return [self._chunk({}, finish), self._chunk(usage=chat_usage(response.get("usage")) or {})]
        return []


async def relay(native: NativeResponses, pipeline_stream: AsyncIterator[bytes],
                on_done: Callable[[Body], None]) -> AsyncIterator[bytes]:
    """The client's Responses stream from a native upstream: its events as they come (the pipeline's
    chat chunks only pace them and say whether the stream broke); `on_done` sees the final response."""
    try:
        async for raw in pipeline_stream:
            out = [native.event_bytes(e) for e in native.pending]
            native.pending.clear()
            broken = raw.startswith(b"data: {\"error\"") or b"\n\ndata: {\"error\"" in raw
            if broken and not native.terminal:
                out.append(native.fail_events(_error_of(raw)))
            if out:
                yield b"".join(out)
        if native.pending:
            yield b"".join(native.event_bytes(e) for e in native.pending)
            native.pending.clear()
    finally:
        close = getattr(pipeline_stream, "aclose", None)
        if close is not None:  # the pipeline's stream logs the call when it closes
            await close()
        if native.final is not None and native.final.get("status") != "failed":
            on_done(native.final)


def _error_of(raw: bytes) -> Body:
    for event in raw.split(b"\n\n"):
        if event.startswith(b'data: {"error"'):
            body: Any = orjson.loads(event[6:])
            return body if isinstance(body, dict) else {}
    return {}
