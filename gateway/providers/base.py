"""The one protocol every provider adapter implements, and the error it raises.

Bodies are OpenAI-shaped dicts in both directions: an adapter for a non-OpenAI provider
translates on the way in and out, so the pipeline never knows which kind it talks to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Body = dict[str, Any]


class UpstreamError(Exception):
    """An upstream call that did not produce a usable answer.

    `status` is the upstream HTTP status, or None when no response arrived (timeout,
    connection refused or reset). `retry_after` is the upstream's Retry-After in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        timeout: bool = False,
        body: Body | None = None,
        permanent: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.timeout = timeout
        self.body = body
        self.permanent = permanent  # the same request would fail the same way (an oversized answer)
        self.headers = headers or {}  # upstream headers worth forwarding with the error (lowercase names)

    @property
    def retryable(self) -> bool:
        """408/409/429/5xx and connection-level failures are worth another try."""
        if self.permanent:
            return False
        if self.status is None:
            return True
        return self.status in (408, 409, 429) or self.status >= 500


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """What the pipeline asks of a provider: a body already aimed at the upstream model name."""

    body: Body  # OpenAI-shaped request; body["model"] is the provider's model name
    timeout_s: float  # per-attempt budget
    max_response_bytes: int | None = None  # a larger upstream answer fails with a permanent 502
    # Filled by a streaming adapter as soon as the upstream's response head arrives: the headers worth
    # forwarding (request id, processing time, rate limits), which a stream cannot return alongside.
    received_headers: dict[str, str] = field(default_factory=dict)


def too_large(limit: int) -> UpstreamError:
    """The error for an upstream answer over `max_response_bytes` (not retried: it would be as large)."""
    return UpstreamError(f"upstream response exceeds the gateway's limit of {limit} bytes", status=502,
                         permanent=True)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    body: Body  # OpenAI-shaped response
    headers: dict[str, str]  # upstream headers worth forwarding (lowercase names)


class Provider(Protocol):
    """An upstream LLM service. Implementations own their connection pools."""

    name: str
    timeout_s: float | None  # the provider's own per-attempt limit (`[providers.X] timeout_s`); None: none

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        """A non-streaming chat completion; raises UpstreamError."""
        ...

    def chat_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        """Streamed chat completion chunks (OpenAI `chat.completion.chunk` dicts), in order, grouped
        by what arrived together (never an empty group): the gateway relays a group in one write,
        where one write per chunk cost a system call per token.

        Raises UpstreamError before the first chunk (the pipeline may fall back) or
        mid-stream (the pipeline ends the client's stream with an error event). Headers worth
        forwarding go into `call.received_headers` once the upstream's answer begins.
        """
        ...

    async def embeddings(self, call: UpstreamCall) -> UpstreamResponse:
        """An embeddings request; raises UpstreamError."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class ResponsesProvider(Protocol):
    """A provider that can also send the Responses API natively (`[providers.X] responses = "native"`).

    Bodies are Responses requests and `response` objects; streams yield Responses events (dicts with
    a `type`), grouped like `chat_stream`'s chunks, and end after the terminal event
    (`response.completed`, `.incomplete` or `.failed`); an `error` event or a stream that ends
    without a terminal event raises UpstreamError after the events before it."""

    @property
    def speaks_responses(self) -> bool:
        """Whether this provider is configured to receive Responses requests natively."""
        ...

    async def responses(self, call: UpstreamCall) -> UpstreamResponse:
        """A non-streamed POST /v1/responses; raises UpstreamError."""
        ...

    def responses_stream(self, call: UpstreamCall) -> AsyncIterator[list[Body]]:
        """A streamed POST /v1/responses: its events, in order; raises UpstreamError."""
        ...


def speaks_responses(provider: Provider) -> bool:
    """Whether `provider` is configured to take Responses requests natively (False for chat-only kinds)."""
    return isinstance(provider, ResponsesProvider) and provider.speaks_responses


TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
