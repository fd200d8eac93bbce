"""The fake upstream's own Responses API (POST /v1/responses), for providers set to `responses = "native"`.

A Responses request is answered by the same `FakeEngine.complete` as chat (so scripted replies, tool calls,
json formats and the echo behave alike), then shaped as OpenAI shapes a `response` object or its
stream of events. Deliberately independent of the gateway's own translation
(gateway/serve/responses_api.py): the fake plays the upstream, and a shared mistake would hide.
Conversation state is not kept: a request with `previous_response_id` is refused as OpenAI
refuses an unknown id, so a gateway that forgot to expand its own state fails loudly.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.providers.base import Body

Answer = Callable[[Body], Body]  # a chat body -> its chat.completion (FakeEngine.complete)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "\n".join(str(p.get("text") or p.get("refusal") or "") for p in parts if isinstance(p, dict))


def chat_body(body: Body) -> Body:
    """The chat request the engine answers for a Responses request."""
    messages: list[Body] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    raw = body.get("input")
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw or []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _text(item.get("content"))})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _text(item["output"])})
    chat: Body = {"model": body.get("model", "fake"), "messages": messages}
    tools = [t for t in body.get("tools") or () if t.get("type") == "function"]
    if tools:
        chat["tools"] = [{"type": "function", "function": {"name": t["name"], "parameters": t.get("parameters")}}
                         for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt.get("schema", {})}}
    elif fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    return chat


def _response_id(body: Body) -> str:
    return "resp_up_" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


def _output(rid: str, completion: Body) -> list[Body]:
    message = completion["choices"][0]["message"]
    out: list[Body] = []
    if message.get("content") is not None:
        out.append({"type": "message", "id": f"msg_up_{rid[8:]}", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": message["content"], "annotations": [],
                                 "logprobs": []}]})
    for n, call in enumerate(message.get("tool_calls") or ()):
        out.append({"type": "function_call", "id": f"fc_up_{rid[8:]}{n}", "call_id": call["id"],
                    "name": call["function"]["name"], "arguments": call["function"]["arguments"],
                    "status": "completed"})
    return out


def response(body: Body, *, status: str, output: list[Body], usage: Body | None, rid: str) -> Body:
    """A `response` object echoing the request, as OpenAI's upstream answers."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    out: Body = {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": status,
        "completed_at": int(time.time()) if status == "completed" else None, "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": body.get("model", "fake"), "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": None, "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": text, "tool_choice": body.get("tool_choice", "auto"),
        "tools": [{**t, "strict": t.get("strict", True)} if t.get("type") == "function" else t
                  for t in body.get("tools") or ()],  # OpenAI states `strict` (default on)
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "metadata": body.get("metadata") or {},
    }
    if usage is not None:
        out["usage"] = usage
    return out


def _usage(completion: Body) -> Body:
    u = completion["usage"]
    return {"input_tokens": u["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": u["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u["total_tokens"]}


def previous_id_error(body: Body) -> Body | None:
    """OpenAI's 400 for a `previous_response_id` this upstream never stored (it stores nothing)."""
    prev = body.get("previous_response_id")
    if not prev:
        return None
    return {"error": {"message": f"Previous response with id '{prev}' not found.", "type": "invalid_request_error",
                      "param": "previous_response_id", "code": "previous_response_not_found"}}


def complete(answer: Answer, body: Body) -> Body:
    """The non-streamed `response` object for a Responses request."""
    completion = answer(chat_body(body))
    rid = _response_id(body)
    return response(body, status="completed", output=_output(rid, completion), usage=_usage(completion), rid=rid)


def events(answer: Answer, body: Body) -> list[Body]:
    """The stream of events OpenAI sends for the same answer (text deltas word by word)."""
    completion = answer(chat_body(body))
    rid = _response_id(body)
    items = _output(rid, completion)
    out: list[Body] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append({"type": kind, "sequence_number": len(out), **fields})

    start = response(body, status="in_progress", output=[], usage=None, rid=rid)
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    for index, item in enumerate(items):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "content": []})
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=empty)
            for j, word in enumerate(text.split(" ")):
                emit("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                     delta=word if j == 0 else " " + word, logprobs=[])
            emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=text,
                 logprobs=[])
            emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                 part=item["content"][0])
        else:
            emit("response.output_item.added", output_index=index,
                 item={**item, "arguments": "", "status": "in_progress"})
            args = item["arguments"]
            for start_at in range(0, len(args), 8):
                emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                     delta=args[start_at:start_at + 8])
            emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                 name=item["name"], arguments=args)
        emit("response.output_item.done", output_index=index, item=item)
    emit("response.completed", response=response(body, status="completed", output=items,
                                                 usage=_usage(completion), rid=rid))
    return out
