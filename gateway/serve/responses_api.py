"""The Responses API (POST /v1/responses) translated to and from chat completions.

A Responses request becomes a chat body that goes through the same pipeline as any chat call
(route, template, retrieval, learned routing, capture, feedback); the chat answer becomes a
`response` object. Conversation state (`previous_response_id`) is a list of Responses items: the
earlier turns' input and output, replayed in front of the new input (instructions are not
carried over, as OpenAI documents).

Pure functions on JSON bodies: no I/O, so the streaming renderer (responses_stream.py) and the
HTTP handler (gateway/http/responses.py) share them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest
from gateway.messages import content_text

Body = dict[str, Any]

# Request fields with the same meaning in chat completions: passed on as they are.
_SAME_IN_CHAT = ("temperature", "top_p", "parallel_tool_calls", "user", "prompt_cache_key",
                 "safety_identifier", "service_tier", "seed", "stop", "presence_penalty", "frequency_penalty")
_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A validated POST /v1/responses body: what the translation and the answer need."""

    model: str
    input_items: list[Body]  # normalised Responses items (a string input becomes one user message)
    body: Body  # the request as sent (echoed fields: tools, tool_choice, text, metadata…)
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] = field(default_factory=dict)


def item_id(prefix: str, call_id: str, n: int) -> str:
    return f"{prefix}_{call_id.partition('-')[2] or call_id}{n:02d}"


def parse_request(body: Body, *, native: bool = False) -> ResponsesRequest:
    """Validate what the translation relies on; 400 naming the field otherwise. `native`: every
    upstream of the route takes Responses as it is, so built-in tools and other item types
    (web search, file search, item references…) are the upstream's to judge."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    raw = body.get("input")
    if isinstance(raw, str):
        items: list[Body] = [{"type": "message", "role": "user", "content": raw}]
    elif isinstance(raw, list):
        items = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise InvalidRequest(f"input[{i}] must be an object.", param=f"input[{i}]")
            items.append(_check_item(item, i, native))
    elif raw is None and body.get("previous_response_id"):
        items = []
    else:
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("'instructions' must be a string.", param="instructions")
    prev = body.get("previous_response_id")
    if prev is not None and not isinstance(prev, str):
        raise InvalidRequest("'previous_response_id' must be a string.", param="previous_response_id")
    for key in ("stream", "store"):
        if key in body and body[key] is not None and not isinstance(body[key], bool):
            raise InvalidRequest(f"'{key}' must be a boolean.", param=key)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidRequest("'metadata' must be an object of string values.", param="metadata")
    mot = body.get("max_output_tokens")
    if mot is not None and (not isinstance(mot, int) or isinstance(mot, bool) or mot < 1):
        raise InvalidRequest("'max_output_tokens' must be a positive integer.", param="max_output_tokens")
    _check_tools(body.get("tools"), native)
    return ResponsesRequest(model=model, input_items=items, body=body, instructions=instructions,
                            previous_response_id=prev, stream=bool(body.get("stream")),
                            store=body.get("store") is not False, metadata=dict(metadata))


def _check_item(item: Body, i: int, native: bool) -> Body:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if not isinstance(role, str) or role not in _MESSAGE_ROLES:
            raise InvalidRequest(f"input[{i}].role must be one of {sorted(_MESSAGE_ROLES)}.",
                                 param=f"input[{i}].role")
        if not isinstance(item.get("content"), str | list):
            raise InvalidRequest(f"input[{i}].content must be a string or an array of parts.",
                                 param=f"input[{i}].content")
        return {**item, "type": "message"}
    if kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise InvalidRequest(f"input[{i}].{key} must be a string.", param=f"input[{i}].{key}")
        return item
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest(f"input[{i}].call_id must be a string.", param=f"input[{i}].call_id")
        if not isinstance(item.get("output"), str | list):
            raise InvalidRequest(f"input[{i}].output must be a string or an array.", param=f"input[{i}].output")
        return item
    if kind == "reasoning" or (native and isinstance(kind, str)):
        return item  # reasoning: carried in state (a chat upstream has no place for it)
    raise InvalidRequest(f"input[{i}].type '{kind}' is not supported by this gateway "
                         "(messages, function_call, function_call_output).", param=f"input[{i}].type")


def _check_tools(tools: Any, native: bool) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for i, tool in enumerate(tools):
        if native and isinstance(tool, dict) and tool.get("type") != "function" and isinstance(tool.get("type"), str):
            continue  # a built-in tool: the native upstream runs it
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"tools[{i}]: only function tools ({{type: 'function', name, parameters}}) "
                                 "are supported by this gateway.", param=f"tools[{i}]")


# -- request: Responses -> chat ---------------------------------------------------------------
def _part(part: Any) -> Body | None:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal", "")}
    if kind == "input_image":
        url = part.get("image_url") or part.get("file_id")
        image: Body = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        return {"type": "file", "file": {k: part[k] for k in ("file_data", "file_id", "filename") if k in part}}
    return None


def _chat_content(role: str, content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts = [p for p in (_part(x) for x in content) if p is not None]
    if role != "user" or all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts if p["type"] == "text")  # plain text reaches every upstream
    return parts


def to_messages(items: list[Body]) -> list[Body]:
    """Responses items as chat messages: consecutive function calls become one assistant turn."""
    messages: list[Body] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = item["role"]
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _chat_content(role, item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("_open"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call], "_open": True})
        elif kind == "function_call_output":
            out = item["output"]
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": out if isinstance(out, str) else content_text(
                                 [_part(p) for p in out if _part(p) is not None])})
    for m in messages:
        m.pop("_open", None)
    return messages


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(text: Any) -> Body | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        schema = {"name": fmt.get("name", "response"), "schema": fmt.get("schema", {})}
        for key in ("strict", "description"):
            if key in fmt:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return None


def to_chat(req: ResponsesRequest, history: list[Body]) -> Body:
    """The chat-completions body equivalent to `req`, continuing `history` (earlier turns' items)."""
    messages = to_messages([*history, *req.input_items])
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    if not messages:
        raise InvalidRequest("'input' is empty: nothing to answer.", param="input", code="empty_array")
    b = req.body
    chat: Body = {"model": req.model, "messages": messages}
    for key in _SAME_IN_CHAT:
        if b.get(key) is not None:
            chat[key] = b[key]
    if b.get("max_output_tokens") is not None:
        chat["max_tokens"] = b["max_output_tokens"]
    tools = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict")
                                               if k in t}}
             for t in b.get("tools") or () if t.get("type") == "function"]  # built-in tools: native upstreams only
    if tools:
        chat["tools"] = tools
    if b.get("tool_choice") is not None:
        chat["tool_choice"] = _chat_tool_choice(b["tool_choice"])
    fmt = _response_format(b.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if isinstance(b.get("reasoning"), dict) and b["reasoning"].get("effort"):
        chat["reasoning_effort"] = b["reasoning"]["effort"]
    if isinstance(b.get("top_logprobs"), int) and b["top_logprobs"] > 0:
        chat["logprobs"], chat["top_logprobs"] = True, b["top_logprobs"]
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# -- answer: chat -> Responses ----------------------------------------------------------------
def message_item(item_id: str, text: str, *, refusal: bool = False, status: str = "completed") -> Body:
    part = ({"type": "refusal", "refusal": text} if refusal
            else {"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def function_item(item_id: str, call: Body, status: str = "completed") -> Body:
    fn = call.get("function") or {}
    return {"type": "function_call", "id": item_id, "call_id": call.get("id") or item_id,
            "name": fn.get("name", ""), "arguments": fn.get("arguments", ""), "status": status}


def output_items(call_id: str, completion: Body) -> list[Body]:
    """The `output` of a response from a chat completion's first choice."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") or {}
    items: list[Body] = []
    if message.get("refusal"):
        items.append(message_item(item_id("msg", call_id, 0), message["refusal"], refusal=True))
    elif message.get("content") or not message.get("tool_calls"):
        items.append(message_item(item_id("msg", call_id, 0), content_text(message.get("content"))))
    for n, call in enumerate(message.get("tool_calls") or (), start=1):
        items.append(function_item(item_id("fc", call_id, n), call))
    return items


def usage(chat_usage: Body | None) -> Body | None:
    """Chat usage in the Responses shape."""
    if not chat_usage:
        return None
    prompt = chat_usage.get("prompt_tokens") or 0
    done = chat_usage.get("completion_tokens") or 0
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": done, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": chat_usage.get("total_tokens") or prompt + done}


def finish_status(finish_reason: str | None) -> tuple[str, Body | None]:
    """A chat finish_reason as a response's status and incomplete_details."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(req: ResponsesRequest, call_id: str, created: float, *, model: str | None,
                    output: list[Body], status: str, chat_usage: Body | None = None,
                    incomplete: Body | None = None, error: Body | None = None) -> Body:
    """A `response` object echoing the request's settings."""
    b = req.body
    text = b.get("text") if isinstance(b.get("text"), dict) else {"format": {"type": "text"}}
    out: Body = {
        "id": call_id, "object": "response", "created_at": int(created), "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error, "incomplete_details": incomplete, "instructions": req.instructions,
        "max_output_tokens": b.get("max_output_tokens"), "model": model or req.model, "output": output,
        "parallel_tool_calls": b.get("parallel_tool_calls", True),
        "previous_response_id": req.previous_response_id, "reasoning": None, "store": req.store,
        "temperature": b.get("temperature", 1.0), "text": text, "tool_choice": b.get("tool_choice", "auto"),
        "tools": _echoed_tools(b.get("tools")), "top_p": b.get("top_p", 1.0), "truncation": "disabled",
        "metadata": req.metadata,
    }
    used = usage(chat_usage)
    if used is not None:  # the schema has no null usage: absent until known
        out["usage"] = used
    if isinstance(b.get("user"), str):
        out["user"] = b["user"]
    return out


def _echoed_tools(tools: Any) -> list[Body]:
    """The request's tools as a response echoes them: a function tool states `strict` (chat's
    default, off, when the client did not say)."""
    return [{**t, "strict": bool(t.get("strict"))} if t.get("type") == "function" else t for t in tools or ()]


def from_chat(req: ResponsesRequest, call_id: str, created: float, completion: Body) -> Body:
    """The `response` object for a non-streamed chat completion."""
    choices = completion.get("choices") or [{}]
    status, incomplete = finish_status(choices[0].get("finish_reason"))
    return response_object(req, call_id, created, model=completion.get("model"),
                            output=output_items(call_id, completion), status=status,
                            chat_usage=completion.get("usage"), incomplete=incomplete)


def input_item_list(items: list[Body], call_id: str) -> list[Body]:
    """The request's input items as listed by GET …/input_items: each with an id and a status."""
    out = []
    for n, item in enumerate(items):
        listed = dict(item)
        if listed.get("type") == "message":
            content = listed["content"]
            kind = "output_text" if listed["role"] == "assistant" else "input_text"
            if isinstance(content, str):
                listed["content"] = [{"type": kind, "text": content}]
            listed.setdefault("status", "completed")
        listed.setdefault("id", item_id("in", call_id, n))
        out.append(listed)
    return out
