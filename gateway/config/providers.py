"""`[providers.NAME]` tables: one settings model per `kind`, a tagged union on `kind`.

Each kind carries only its own keys, so `latency_ms` on an OpenAI upstream or `base_url` on the
fake provider is an "unknown key" naming its path instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROVIDER_KINDS = ("openai", "azure", "litellm", "fake")
ResponsesMode = Literal["translate", "native"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _HttpProvider(_Strict):
    """Keys shared by the providers that talk HTTP to an upstream."""

    api_key_env: str | None = None  # secrets by reference only: the env var's name
    timeout_s: float = Field(60.0, gt=0)
    headers: dict[str, str] = {}
    # Requests the upstream serves at once (llama.cpp: its --parallel). Unset: 1 for a server on
    # this machine or a private network, many otherwise (gateway/serve/live_load.py). With a
    # number, learning's evaluation replays yield to live calls there (learners/economy.py).
    slots: int | None = Field(None, ge=1)


class _NativeProvider(_HttpProvider):
    """Keys of the upstreams served by the native HTTP/1.1 client (gateway/providers/http1.py)."""

    base_url: str = Field(min_length=1)
    max_connections: int = Field(256, gt=0)
    # An http:// forward proxy for this provider (https upstreams tunnel through CONNECT).
    # Unset: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment apply; "" means no proxy.
    proxy: str | None = None
    # How POST /v1/responses reaches this upstream: "translate" (as chat completions, which every
    # OpenAI-compatible server speaks) or "native" (passed through to its own /v1/responses).
    responses: ResponsesMode = "translate"


class OpenAIProviderSettings(_NativeProvider):
    """An OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp, Groq…) on the native fast path."""

    kind: Literal["openai"]


class AzureProviderSettings(_NativeProvider):
    """Azure OpenAI: deployment paths and the `api-key` header."""

    kind: Literal["azure"]
    api_version: str


class LiteLLMProviderSettings(_HttpProvider):
    """Any other provider (Anthropic, Bedrock, Vertex…) through litellm (whose HTTP clients follow
    HTTPS_PROXY / NO_PROXY from the environment)."""

    kind: Literal["litellm"]
    base_url: str | None = None
    extra: dict[str, Any] = {}  # trusted call arguments (aws_region_name, vertex_project, …)


class FakeProviderSettings(_Strict):
    """The deterministic simulated upstream for tests and the demo."""

    kind: Literal["fake"]
    latency_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    seed: int = 0
    replies: dict[str, str] = {}  # substring of the last user message -> scripted reply
    hard: list[str] = []  # substrings of the last user message that this model gets wrong…
    hard_reply: str = "Sorry, I cannot answer that reliably."  # …answering this instead
    responses: ResponsesMode = "translate"  # "native": the simulated upstream also speaks the Responses API


ProviderSettings = Annotated[
    OpenAIProviderSettings | AzureProviderSettings | LiteLLMProviderSettings | FakeProviderSettings,
    Field(discriminator="kind"),
]

def provider_problem(loc: tuple[int | str, ...], err_type: str) -> tuple[tuple[int | str, ...], str | None]:
    """For an error inside `[providers]`: its key path without the union's tag, and a message for
    config.toml where pydantic's own would puzzle (None: keep pydantic's)."""
    if len(loc) < 2 or loc[0] != "providers":
        return loc, None
    if err_type == "union_tag_not_found":
        return (*loc[:2], "kind"), "required, one of " + ", ".join(PROVIDER_KINDS)
    if err_type == "union_tag_invalid":
        return (*loc[:2], "kind"), "must be one of " + ", ".join(PROVIDER_KINDS)
    if len(loc) >= 3 and loc[2] in PROVIDER_KINDS:
        kind = loc[2]
        loc = (*loc[:2], *loc[3:])
        if err_type == "missing":
            return loc, f"required for kind '{kind}'"
    return loc, None
