"""Rebuild a non-streaming `chat.completion` body from the chunks of a stream, for the call log."""

from __future__ import annotations

from typing import Any

Body = dict[str, Any]


class StreamAssembler:
    """Accumulates `chat.completion.chunk`s: content, tool-call deltas, finish reasons, usage."""

    def __init__(self) -> None:
        self._choices: dict[int, Body] = {}
        self._tool_calls: dict[int, dict[int, Body]] = {}
        self.usage: Body | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.saw_content = False

    def add(self, chunk: Body) -> None:
        if self.model is None:
            self.model = chunk.get("model")
            self.created = chunk.get("created")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for ch in chunk.get("choices") or ():
            idx = ch.get("index", 0)
            acc = self._choices.setdefault(idx, {"content": [], "finish_reason": None, "role": "assistant"})
            delta = ch.get("delta") or {}
            if delta.get("content"):
                acc["content"].append(delta["content"])
                self.saw_content = True
            for tc in delta.get("tool_calls") or ():
                self.saw_content = True
                calls = self._tool_calls.setdefault(idx, {})
                call = calls.setdefault(tc.get("index", 0), {"id": None, "type": "function",
                                                              "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    call["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    call["function"]["arguments"] += fn["arguments"]
            if ch.get("finish_reason"):
                acc["finish_reason"] = ch["finish_reason"]

    def result(self, call_id: str) -> Body:
        choices = []
        for idx in sorted(self._choices):
            acc = self._choices[idx]
            message: Body = {"role": "assistant", "content": "".join(acc["content"]) or None}
            calls = self._tool_calls.get(idx)
            if calls:
                message["tool_calls"] = [calls[i] for i in sorted(calls)]
            choices.append({"index": idx, "message": message, "finish_reason": acc["finish_reason"]})
        return {"id": call_id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage}
