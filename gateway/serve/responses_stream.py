"""A streamed chat completion re-rendered as the Responses API's server-sent events.

The pipeline's chat stream (bytes of `data: {chunk}` events) goes in; out come `response.created`,
`response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.output_text.delta`, `response.function_call_arguments.delta`, their `.done`
counterparts and `response.completed` (or `error` then `response.failed` when the upstream broke
mid-stream). Each item is closed when the next one opens, as OpenAI does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.serve import responses_api as ra
from gateway.serve.responses_api import ResponsesRequest

Body = dict[str, Any]


def chat_chunks(raw: bytes) -> list[Body | None]:
    """The chunks in a piece of the pipeline's chat stream; None stands for `[DONE]`."""
    out: list[Body | None] = []
    for event in raw.split(b"\n\n"):
        if not event.startswith(b"data: "):
            continue
        payload = event[6:]
        out.append(None if payload == b"[DONE]" else orjson.loads(payload))
    return out


class ResponsesStream:
    """Turns chat chunks into Responses events; `output` and `final` hold the result afterwards."""

    def __init__(self, req: ResponsesRequest, call_id: str, created: float) -> None:
        self.req = req
        self.call_id = call_id
        self.created = created
        self.seq = 0
        self.model: str | None = None
        self.output: list[Body] = []  # finished items, in output_index order
        self.final: Body | None = None  # the completed (or failed) response object
        self._open: Body | None = None  # the item being streamed
        self._open_key: Any = None  # "text" or the chat tool-call index
        self._text: list[str] = []
        self._usage: Body | None = None
        self._finish: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _snapshot(self, status: str, **extra: Any) -> Body:
        return ra.response_object(self.req, self.call_id, self.created, model=self.model,
                                  output=list(self.output), status=status, **extra)

    def start(self) -> bytes:
        """response.created and response.in_progress."""
        snap = self._snapshot("in_progress")
        return self._event("response.created", response=snap) + self._event("response.in_progress", response=snap)

    def _close(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = len(self.output)
        events: list[bytes] = []
        if item["type"] == "message":
            text = "".join(self._text)
            self._text = []
            item = ra.message_item(item["id"], text)
            part = item["content"][0]
            events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))
        else:
            item = {**item, "status": "completed"}
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        return events

    def _open_item(self, key: Any, item: Body) -> list[bytes]:
        events = self._close()
        self._open, self._open_key = item, key
        index = len(self.output)
        events.append(self._event("response.output_item.added", output_index=index, item=item))
        if item["type"] == "message":
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                             "logprobs": []}))
        return events

    def add(self, chunk: Body) -> list[bytes]:
        """The events for one chat chunk."""
        self.model = self.model or chunk.get("model")
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a response has one answer
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                if self._open_key != "text" or self._open is None:
                    item = {"type": "message", "id": ra.item_id("msg", self.call_id, len(self.output)),
                            "status": "in_progress", "role": "assistant", "content": []}
                    events += self._open_item("text", item)
                self._text.append(text)
                events.append(self._event("response.output_text.delta", item_id=self._open["id"],  # type: ignore[index]
                                          output_index=len(self.output), content_index=0, delta=text, logprobs=[]))
            for tc in delta.get("tool_calls") or ():
                events += self._tool_delta(tc)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def _tool_delta(self, tc: Body) -> list[bytes]:
        events: list[bytes] = []
        key = ("tool", tc.get("index", 0))
        fn = tc.get("function") or {}
        item = self._open
        if self._open_key != key or item is None:
            n = len(self.output) + 1
            item = {"type": "function_call", "id": ra.item_id("fc", self.call_id, n),
                    "call_id": tc.get("id") or ra.item_id("call", self.call_id, n),
                    "name": fn.get("name") or "", "arguments": "", "status": "in_progress"}
            events += self._open_item(key, item)
        elif fn.get("name"):
            item["name"] += fn["name"]
        args = fn.get("arguments")
        if args:
            item["arguments"] += args
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=len(self.output), delta=args))
        return events

    def finish(self) -> list[bytes]:
        """Close the open item; response.completed (or .incomplete) with usage."""
        events = self._close()
        status, incomplete = ra.finish_status(self._finish)
        if not self.output:
            self.output.append(ra.message_item(ra.item_id("msg", self.call_id, 0), ""))
        self.final = self._snapshot(status, chat_usage=self._usage, incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.final))
        return events

    def fail(self, error: Body) -> list[bytes]:
        """The upstream broke mid-stream: an `error` event (the SDKs raise on it), then response.failed."""
        err = error.get("error") or {}
        self.final = self._snapshot("failed", error={"code": "server_error", "message": err.get("message", "")})
        return [self._event("error", code=err.get("code"), message=err.get("message", ""), param=err.get("param"),
                            error=err),
                self._event("response.failed", response=self.final)]


async def render(req: ResponsesRequest, call_id: str, created: float, chat: AsyncIterator[bytes],
                 on_done: Callable[[ResponsesStream], None]) -> AsyncIterator[bytes]:
    """The Responses event stream for the pipeline's chat stream; `on_done` sees the finished state."""
    rs = ResponsesStream(req, call_id, created)
    yield rs.start()
    ended = False
    try:
        async for raw in chat:
            events: list[bytes] = []
            for chunk in chat_chunks(raw):
                if chunk is None:
                    events += rs.finish()
                    ended = True
                elif "error" in chunk:
                    events += rs.fail(chunk)
                    ended = True
                else:
                    events += rs.add(chunk)
            if events:
                yield b"".join(events)
        if not ended:
            yield b"".join(rs.fail({"error": {"message": "the stream ended early"}}))
    finally:
        await _close(chat)  # the pipeline's stream logs the call when it closes: now, not when collected
        if rs.final is not None and rs.final["status"] != "failed":
            on_done(rs)


async def _close(it: AsyncIterator[bytes]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
