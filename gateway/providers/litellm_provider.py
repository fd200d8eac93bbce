"""The adapter for every provider that does not speak OpenAI's API (Anthropic, Bedrock, Vertex/Gemini,
Cohere, Mistral…), translating both ways through litellm (pinned 1.106.0).

litellm is imported on first construction, never at module import: it costs seconds and ~100 MB, and
it reads its environment at import, so `_load_litellm` sets that environment first (local cost map and
Anthropic beta-header table instead of fetching them, no `.env` loading, quiet logs) and then turns off
what the gateway does itself or does not want: retries (the pipeline retries with tenacity), the aiohttp
transport (httpx instead: one HTTP stack, and respx can stand in for the upstream in tests) and the MCP
tool gateway (it would dial MCP servers named in a client's `tools`, and needs the `mcp` package).

Request fields. OpenAI's chat fields go to litellm, which translates the ones the provider supports and
answers 400 (UnsupportedParamsError) for the others rather than dropping them silently: a client asking
for `n=3` or `logit_bias` learns that this model cannot do it. Exceptions: values equal to OpenAI's own
default (`n=1`, zero penalties, `logprobs=false`) mean nothing and are dropped, and `metadata`/`store`
(OpenAI's stored completions) are dropped because litellm would read `metadata` as its own. An operator
who prefers best effort sets `extra={"drop_params": True}`. A field OpenAI does not define reaches the
provider's request body as-is (e.g. Anthropic's `top_k`), unless litellm would read it as one of its own
controls (`api_base`, `mock_response`, `aws_*`, …): such a field is refused with a 400, since a client
must never redirect the call, or its credentials, elsewhere.

Responses are litellm's `model_dump()` reduced to the fields of OpenAI's schema (litellm adds private
keys and nulls where OpenAI's schema wants a type), plus `reasoning_content` when a model returns
thinking text, the name OpenAI-compatible servers use for it.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import re
import struct
import time
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any

from gateway.providers.base import Body, UpstreamCall, UpstreamError, UpstreamResponse

# Set before `import litellm`, which reads them at import time.
_LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it fetches model prices from GitHub at import
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",  # else it fetches a header table on first Anthropic call
    "LITELLM_MODE": "PRODUCTION",  # "DEV" (its default) loads ./.env into os.environ
    "DISABLE_AIOHTTP_TRANSPORT": "True",
}
_LITELLM_ENV_DEFAULTS = {"LITELLM_LOG": "ERROR"}  # its own stderr handler logs DEBUG by default

# OpenAI Chat Completions request fields (spec 2.3.0) that litellm maps per provider.
_CHAT_FIELDS = frozenset({
    "messages", "model", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_tokens", "max_completion_tokens", "n", "modalities", "prediction", "audio", "response_format",
    "seed", "service_tier", "stop", "stream_options", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "user", "functions", "function_call", "reasoning_effort", "verbosity",
    "web_search_options", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    "thinking",  # not OpenAI's, but litellm maps it (Anthropic, Bedrock, Gemini extended thinking)
})
_EMBEDDING_FIELDS = frozenset({"model", "input", "dimensions", "user"})
_NOOP_DEFAULTS: dict[str, Any] = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False}
_ALWAYS_DROPPED = frozenset({"stream", "metadata", "store", "encoding_format"})
# Unknown fields that litellm (or one of its provider modules) would read as routing or credentials.
_REFUSED_PREFIXES = ("_", "litellm", "aws_", "vertex_", "azure_", "watsonx_", "oci_", "sagemaker_",
                     "bedrock_", "gcp_", "google_", "databricks_", "snowflake_", "api_", "mock_")
_REFUSED_WORDS = ("credential", "secret", "password", "endpoint", "url", "base", "region", "project", "key")

_USAGE_DETAILS = frozenset({"cached_tokens", "audio_tokens", "text_tokens", "image_tokens",
                            "cache_write_tokens", "reasoning_tokens", "accepted_prediction_tokens",
                            "rejected_prediction_tokens"})
_FORWARDED_HEADERS = frozenset({"request-id", "x-request-id", "retry-after"})
_RATELIMIT_MARK = "ratelimit"  # x-ratelimit-*, anthropic-ratelimit-*


def _load_litellm() -> ModuleType:
    """Import litellm once, with its network fetches, retries and noise turned off."""
    os.environ.update(_LITELLM_ENV)
    for key, value in _LITELLM_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import litellm

    litellm.disable_aiohttp_transport = True
    litellm.num_retries = None
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
    litellm.drop_params = False
    litellm.disable_hf_tokenizer_download = True  # token counting must not reach a model hub
    litellm.turn_off_message_logging = True
    return litellm


class _Secret:
    """Holds the api key so that no repr, log line or traceback local prints it."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "_Secret(***)"


class LiteLLMProvider:
    """A non-OpenAI upstream behind the Provider protocol; `call.body["model"]` is litellm's model string.

    `extra` holds operator-trusted litellm keyword arguments added to every call, e.g.
    `{"aws_region_name": "eu-west-1"}`, `{"vertex_project": …}`, `{"extra_headers": {…}}`,
    `{"drop_params": True}`.
    """

    def __init__(self, name: str, *, api_key: str | None, base_url: str | None,
                 extra: dict[str, Any] | None = None, timeout_s: float | None = None) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._litellm = _load_litellm()
        self._key = _Secret(api_key)
        self._base_url = base_url
        self._extra = dict(extra or {})
        signature = inspect.signature(self._litellm.acompletion).parameters
        self._controls = frozenset(signature) - _CHAT_FIELDS

    def __repr__(self) -> str:
        return f"LiteLLMProvider({self.name!r}, base_url={self._base_url!r})"

    def _kwargs(self, body: Body, allowed: frozenset[str], timeout_s: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for field, value in body.items():
            if field in _ALWAYS_DROPPED or (field in _NOOP_DEFAULTS and value == _NOOP_DEFAULTS[field]):
                continue
            if field not in allowed and not self._passable(field):
                message = f"Unrecognized request argument supplied: {field}"
                raise UpstreamError(message, status=400,
                                    body=_error_body(message, "invalid_request_error", field))
            kwargs[field] = value
        kwargs.update(self._extra)
        kwargs.update(api_key=self._key.value, api_base=self._base_url, timeout=timeout_s,
                      num_retries=0, max_retries=0)
        return kwargs

    def _passable(self, field: str) -> bool:
        """An unknown field may reach the provider unless litellm would take it as a control."""
        lowered = field.lower()
        return not (
            field in self._controls
            or self._litellm.types.utils.is_litellm_owned_kwarg(field)
            or lowered.startswith(_REFUSED_PREFIXES)
            or any(word in lowered for word in _REFUSED_WORDS)
        )

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        """A non-streamed chat completion, as OpenAI's `chat.completion` object."""
        kwargs = self._kwargs(call.body, _CHAT_FIELDS, call.timeout_s)
        kwargs.pop("stream_options", None)
        try:
            async with asyncio.timeout(call.timeout_s):
                response = await self._litellm.acompletion(stream=False, _skip_mcp_handler=True, **kwargs)
        except Exception as exc:
            raise self._error(exc, call.timeout_s) from exc
        hidden = getattr(response, "_hidden_params", None) or {}
        return UpstreamResponse(_completion(response.model_dump()), _forwarded(hidden))

    async def chat_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        """Streamed `chat.completion.chunk` dicts, one per group; a last chunk with `usage` when
        include_usage was asked."""
        kwargs = self._kwargs(call.body, _CHAT_FIELDS, call.timeout_s)
        try:
            stream = await self._litellm.acompletion(stream=True, _skip_mcp_handler=True, **kwargs)
        except Exception as exc:
            raise self._error(exc, call.timeout_s) from exc
        try:
            async for chunk in stream:
                yield [_chunk(chunk.model_dump())]
        except Exception as exc:
            raise self._error(exc, call.timeout_s) from exc
        finally:
            await stream.aclose()

    async def embeddings(self, call: UpstreamCall) -> UpstreamResponse:
        """Embeddings as OpenAI's list object; base64 (little-endian float32) when the client asked for it."""
        kwargs = self._kwargs(call.body, _EMBEDDING_FIELDS, call.timeout_s)
        try:
            async with asyncio.timeout(call.timeout_s):
                response = await self._litellm.aembedding(**kwargs)
        except Exception as exc:
            raise self._error(exc, call.timeout_s) from exc
        hidden = getattr(response, "_hidden_params", None) or {}
        as_base64 = call.body.get("encoding_format") == "base64"
        return UpstreamResponse(_embeddings(response.model_dump(), as_base64), _forwarded(hidden))

    async def aclose(self) -> None:
        """Close the HTTP clients litellm cached for the running event loop.

        litellm keeps one client cache per process, keyed by event loop; removing this loop's
        entries (not only closing them) lets any provider still in use open fresh ones.
        """
        cache = getattr(self._litellm, "in_memory_llm_clients_cache", None)
        if cache is None:
            return
        suffix = f"-{id(asyncio.get_running_loop())}"
        for key in [k for k in list(cache.cache_dict) if str(k).endswith(suffix)]:
            client = cache.cache_dict.get(key)
            cache._remove_key(key)
            close = getattr(client, "aclose", None) or getattr(client, "close", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result

    def _error(self, exc: BaseException, timeout_s: float) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        return upstream_error(exc, timeout_s, secret=self._key.value)


def upstream_error(exc: BaseException, timeout_s: float, *, secret: str | None = None) -> UpstreamError:
    """Map an exception raised by litellm (or the HTTP stack beneath it) to an UpstreamError.

    `secret` (the api key) is masked wherever an upstream echoed it into its message.
    """
    import httpx
    import openai  # litellm's exceptions subclass the OpenAI SDK's

    chain = _chain(exc)
    if any(isinstance(e, httpx.TimeoutException | TimeoutError | openai.APITimeoutError) for e in chain):
        return UpstreamError(f"upstream timed out after {timeout_s:g}s", timeout=True)
    # litellm also raises its APIConnectionError for its own failures: only the HTTP stack's count.
    broken = [e for e in chain if isinstance(e, httpx.TransportError)
              or (isinstance(e, openai.APIConnectionError) and type(e).__module__.startswith("openai"))]
    if broken:
        return UpstreamError(f"upstream connection failed: {type(broken[0]).__name__}: {broken[0]}")
    # litellm folds some statuses into others (Anthropic's 529 surfaces as 500): the innermost wins.
    # None at all means the upstream answered 2xx with something unusable: a bad gateway.
    status: int | None = None
    headers: Mapping[str, str] = {}
    for link in chain:
        code = getattr(link, "status_code", None)
        response = getattr(link, "response", None)
        if isinstance(link, httpx.HTTPStatusError) and response is not None:
            code = response.status_code
        if isinstance(code, int | str) and str(code).isdigit() and 400 <= int(code) <= 599:
            status = int(code)
        for attr in ("litellm_response_headers", "headers"):
            found = getattr(link, attr, None)
            if found and not headers:
                headers = found
        if response is not None and not headers and getattr(response, "headers", None):
            headers = response.headers
    raw = str(getattr(exc, "message", None) or exc)
    message, kind = _provider_message(raw.replace(secret, "***") if secret else raw)
    return UpstreamError(message, status=status if status is not None else 502,
                         retry_after=_retry_after(headers), body=_error_body(message, kind, None))


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain and len(chain) < 16:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain


_LITELLM_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*)+(?:\w+(?:Exception|Error)\s+-\s+)?")


def _provider_message(raw: str) -> tuple[str, str]:
    """The provider's own message (and error type) out of litellm's wrapped one."""
    text = _LITELLM_PREFIX.sub("", raw.strip())
    text = text.split(". Handle with `litellm.")[0]
    if text.startswith(("b'", 'b"')) and text.endswith(("'", '"')):
        text = text[2:-1].encode("latin-1", "backslashreplace").decode("unicode_escape", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        first = text.splitlines()[0] if text else "upstream error"
        return first.split(" To drop these")[0].strip(), "upstream_error"
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or text
        return str(message), str(error.get("type") or "upstream_error")
    return str(error), "upstream_error"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from retry-after-ms, else Retry-After (delta-seconds or an HTTP date)."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                pass
    try:
        return max(0.0, parsedate_to_datetime(lowered["retry-after"]).timestamp() - time.time())
    except (KeyError, TypeError, ValueError):
        return None


def _error_body(message: str, kind: str, param: str | None) -> Body:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _forwarded(hidden: Mapping[str, Any]) -> dict[str, str]:
    """Request ids and rate-limit budgets from litellm's `llm_provider-*` copy of the upstream headers."""
    out: dict[str, str] = {}
    for key, value in (hidden.get("additional_headers") or {}).items():
        name = str(key).lower().removeprefix("llm_provider-")
        if name in _FORWARDED_HEADERS or _RATELIMIT_MARK in name:
            out[name] = str(value)
    return out


# ---- litellm's dumps reduced to OpenAI's schema -------------------------------------------------


def _usage(usage: Any) -> Body | None:
    if not isinstance(usage, dict):
        return None
    out: Body = {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    for details in ("prompt_tokens_details", "completion_tokens_details"):
        inner = usage.get(details)
        if isinstance(inner, dict):
            kept = {k: v for k, v in inner.items() if type(v) is int and k in _USAGE_DETAILS}
            if kept:
                out[details] = kept
    return out


def _tool_call(call: Any, *, chunk: bool) -> Body:
    function = call.get("function") or {}
    out: Body = {"index": call.get("index") or 0} if chunk else {}
    for key in ("id", "type"):
        if isinstance(call.get(key), str):
            out[key] = call[key]
    fn = {k: function[k] for k in ("name", "arguments") if isinstance(function.get(k), str)}
    if not chunk:
        out.setdefault("type", "function")
        fn.setdefault("arguments", "")
    if fn or not chunk:
        out["function"] = fn
    return out


def _message(msg: Any, *, chunk: bool) -> Body:
    msg = msg if isinstance(msg, dict) else {}
    out: Body = {} if chunk else {"role": "assistant", "content": None, "refusal": None}
    for key in ("role", "content", "refusal", "reasoning_content"):
        if isinstance(msg.get(key), str):
            out[key] = msg[key]
    if msg.get("tool_calls"):
        out["tool_calls"] = [_tool_call(c, chunk=chunk) for c in msg["tool_calls"]]
    for key in ("function_call", "audio"):
        if isinstance(msg.get(key), dict):
            out[key] = msg[key]
    if isinstance(msg.get("annotations"), list) and msg["annotations"]:
        out["annotations"] = msg["annotations"]
    return out


def _envelope(dump: Body, kind: str) -> Body:
    created = int(dump.get("created") or time.time())
    out: Body = {"id": str(dump.get("id") or ""), "object": kind, "created": created,
                 "model": str(dump.get("model") or "")}
    for key in ("system_fingerprint", "service_tier"):
        if isinstance(dump.get(key), str):
            out[key] = dump[key]
    return out


def _completion(dump: Body) -> Body:
    out = _envelope(dump, "chat.completion")
    out["choices"] = [
        {"index": c.get("index", i), "message": _message(c.get("message"), chunk=False),
         "finish_reason": c.get("finish_reason") or "stop",
         "logprobs": c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None}
        for i, c in enumerate(dump.get("choices") or [])
    ]
    usage = _usage(dump.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


def _chunk(dump: Body) -> Body:
    out = _envelope(dump, "chat.completion.chunk")
    choices = []
    for i, c in enumerate(dump.get("choices") or []):
        choice: Body = {"index": c.get("index", i), "delta": _message(c.get("delta"), chunk=True),
                        "finish_reason": c.get("finish_reason")}
        if isinstance(c.get("logprobs"), dict):
            choice["logprobs"] = c["logprobs"]
        choices.append(choice)
    usage = _usage(dump.get("usage"))
    if usage is not None:
        out["usage"] = usage
        # OpenAI's usage chunk carries no choice; litellm's carries an empty one.
        choices = [c for c in choices if c["delta"] or c["finish_reason"]]
    out["choices"] = choices
    return out


def _embeddings(dump: Body, as_base64: bool) -> Body:
    data = []
    for i, item in enumerate(dump.get("data") or []):
        vector = item.get("embedding") if isinstance(item, dict) else item
        if as_base64 and isinstance(vector, list):
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": item.get("index", i) if isinstance(item, dict) else i,
                     "embedding": vector})
    usage = dump.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    return {"object": "list", "data": data, "model": str(dump.get("model") or ""),
            "usage": {"prompt_tokens": prompt, "total_tokens": int(usage.get("total_tokens") or prompt)}}
