"""One request, start to finish: template/retrieval -> policy -> provider call (retries, then
the fallback chain) -> call record.

The call record is handed to `sink` (the batched writer's non-blocking submit); nothing here
waits on the database or on a learner. A stream, once a variant sent its first chunk, is relayed
by gateway/serve/stream_relay.py; upstream failures become client errors in
gateway/serve/upstream_errors.py.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.observability import tracing
from gateway.providers.base import Body, Provider, UpstreamCall, UpstreamError, UpstreamResponse
from gateway.providers.shape import check_chat, check_embeddings
from gateway.serve.live_load import LiveLoad
from gateway.serve.retry import call_with_retries
from gateway.serve.runtime import RouteRuntime, Target
from gateway.serve.stream_relay import open_stream, relay
from gateway.serve.upstream_errors import to_gateway_error
from gateway.store.records import CallRecord, Escalation
from policies.base import Decision, Features
from policies.featurise import Memory, same_answer

Sink = Callable[[CallRecord], None]
# How one request reaches a target's provider: the provider itself, or an adapter over it (the
# Responses API sent natively to providers that speak it: gateway/serve/responses_native.py).
Via = Callable[[Provider], Provider]


@dataclass(slots=True)
class RequestContext:
    """Who is asking, and the call's identity; built by the HTTP layer."""

    call_id: str
    key_name: str | None = None
    user: str | None = None  # the chat `user` field as sent (policy pins name users so)
    stored_user: str | None = None  # `user` as the store holds it (its keyed pseudonym): what canaries stick to
    session_id: str | None = None
    no_log: bool = False
    started: float = field(default_factory=time.perf_counter)
    upstream_headers: dict[str, str] = field(default_factory=dict)  # of the answer served (request id, limits)


@dataclass(frozen=True, slots=True)
class Augmentation:
    """What templates and retrieval did to the messages."""

    messages: list[Body]
    template_version: str | None = None
    index_version: str | None = None
    retrieved_ids: tuple[str, ...] = ()
    reason: str = ""
    memory_score: float = 0.0  # nearest retrieved example's similarity (Features.memory_score)
    memory_agreement: float = 0.0  # Features.memory_agreement
    memory: Memory | None = None  # what the retrieved examples answer (RouteRuntime.escalate_to)


class Augmenter(Protocol):
    """Renders the route's active template and injects retrieved examples (the learners' side)."""

    async def augment(self, route: str, messages: list[Body], ctx: RequestContext) -> Augmentation | None: ...


class Router(Protocol):
    """Decides for routes whose policy learns: adds the request's embedding, remembers the Features
    for feedback (gateway/serve/routing.py)."""

    def handles(self, route: RouteRuntime) -> bool: ...

    async def decide(self, route: RouteRuntime, base: Features, body: Body, call_id: str,
                     sticky_user: str | None = None) -> Decision: ...

    def finished(self, record: CallRecord) -> None: ...


# A request with more messages than this is measured on a worker thread: walking 60,000 messages
# takes 5-15 ms, all of it time the event loop would not serve anyone else.
THREAD_MESSAGES = 2_000


def prompt_chars(messages: list[Body]) -> int:
    """Characters of the messages' text content (Features.prompt_chars)."""
    chars = 0
    for m in messages:
        c = m.get("content")
        chars += len(c) if isinstance(c, str) else 0
    return chars


def _features(route: str, body: Body, ctx: RequestContext, aug: Augmentation | None, chars: int) -> Features:
    messages = body["messages"]
    return Features(route=route, user=ctx.user, key_id=ctx.key_name, prompt_chars=chars,
                    n_messages=len(messages), has_tools=bool(body.get("tools")),
                    memory_score=aug.memory_score if aug is not None else 0.0,
                    memory_agreement=aug.memory_agreement if aug is not None else 0.0)


def identity_headers(record: CallRecord) -> dict[str, str]:
    """The headers every chat/embeddings response carries (the cost once known: not on streams)."""
    headers = {"x-flywheel-call-id": record.id, "x-flywheel-route": record.route, "x-flywheel-variant": record.variant}
    if record.cost_usd is not None:  # everything the call cost, escalations included (cf. x-litellm-response-cost)
        headers["x-flywheel-cost-usd"] = f"{record.cost_usd:.8g}"
    return headers


def answer_text(body: Body) -> str | None:
    """The text of a one-choice text answer; None for anything else (tool calls, n > 1)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict) or message.get("tool_calls"):
        return None
    content = message.get("content")
    return content if isinstance(content, str) else None


def disagrees(body: Body, memory: Memory | None) -> bool:
    """Whether a one-choice text answer gives another answer than `memory` (None: nothing to compare)."""
    if memory is None:
        return False
    text = answer_text(body)
    return text is not None and memory.disagrees(text)


def _falls_back(exc: UpstreamError) -> bool:
    """A bad request stays bad on another model; anything else is worth the next variant."""
    return exc.retryable or exc.status in (401, 403, 404)


class Pipeline:
    """The request path for chat completions and embeddings."""

    def __init__(self, sink: Sink, augmenter: Augmenter | None = None, router: Router | None = None,
                 max_response_bytes: Callable[[], int | None] | None = None, live: LiveLoad | None = None) -> None:
        """`max_response_bytes` reads the current cap on an upstream answer (`[server]
        max_upstream_response_bytes`, reloadable); None: no cap. `live` counts this pipeline's
        calls per upstream (the gateway's live pipeline; replays pass None)."""
        self.sink = sink
        self.live = live
        self.augmenter = augmenter
        self.router = router
        self._max_response_bytes = max_response_bytes or (lambda: None)

    def _call(self, provider: Provider, body: Body, timeout: float) -> UpstreamCall:
        """The upstream call for one attempt: the provider's own `timeout_s` caps the attempt's budget."""
        own = getattr(provider, "timeout_s", None)  # adapters written before the attribute lack it
        if own is not None:
            timeout = min(timeout, own)
        return UpstreamCall(body, timeout, self._max_response_bytes())

    # -- shared steps ---------------------------------------------------------------------
    async def _plan(
        self, route: RouteRuntime, body: Body, ctx: RequestContext
    ) -> tuple[Decision, CallRecord, list[Body], Memory | None]:
        """The decision, the call's record, the messages to send and what the memory answers (if anything)."""
        messages: list[Body] = body["messages"]
        # augmentation first: what retrieval found is evidence for the router (Features.memory_*)
        aug = None
        if self.augmenter is not None and route.settings is not None:
            began = time.time_ns()
            aug = await self.augmenter.augment(route.name, messages, ctx)
            if aug is not None and tracing.traced():  # a child span (gateway/observability/tracing.py)
                tracing.step("retrieval", began, {"flywheel.route": route.name,
                                                  "flywheel.template_version": aug.template_version or "",
                                                  "flywheel.index_version": aug.index_version or "",
                                                  "flywheel.retrieved": len(aug.retrieved_ids)})
        chars = (prompt_chars(body["messages"]) if len(body["messages"]) <= THREAD_MESSAGES
                 else await asyncio.to_thread(prompt_chars, body["messages"]))
        features = _features(route.name, body, ctx, aug, chars)
        if self.router is not None and self.router.handles(route):
            decision = await self.router.decide(route, features, body, ctx.call_id, ctx.stored_user)
        else:
            decision = route.policy.choose(features)
        record = CallRecord(id=ctx.call_id, route=route.name, variant=decision.variant,
                            model=route.targets[decision.variant].model, key_id=ctx.key_name, user=ctx.user,
                            session_id=ctx.session_id, policy_version=decision.version,
                            policy_reason=decision.reason,
                            choice_probability=decision.probability, no_log=ctx.no_log,
                            stream=bool(body.get("stream")))
        if aug is not None:
            messages = aug.messages
            record.template_version = aug.template_version
            record.index_version = aug.index_version
            record.retrieved_ids = list(aug.retrieved_ids)
            if aug.reason:
                record.policy_reason += f"; {aug.reason}"
        return decision, record, messages, aug.memory if aug is not None else None

    @staticmethod
    def _upstream_body(target: Target, body: Body, messages: list[Body] | None) -> Body:
        out = {**target.params, **body, "model": target.upstream_model}
        if messages is not None:
            out["messages"] = messages
        return out

    async def _over_targets(
        self, route: RouteRuntime, order: tuple[str, ...], record: CallRecord,
        attempt: Callable[[Target, float], Awaitable[Any]], deadline: float | None = None,
    ) -> tuple[Target, Any]:
        """Try each variant in order, each with retries, all within `deadline` (time.monotonic(); by
        default `deadline_s` from now); returns the first success."""
        rs = route.retries
        if deadline is None:
            deadline = time.monotonic() + rs.deadline_s
        last: UpstreamError | None = None
        for variant in order:
            target = route.targets[variant]
            record.variant, record.model = variant, target.model
            live, name = self.live, target.provider.name
            if live is not None:  # a stream counts again from its first relayed chunk (stream_relay.relay)
                live.enter(name)
            try:
                result = await call_with_retries(
                    functools.partial(attempt, target), rs, deadline=deadline,
                    attempts=record.attempts, model=target.model, provider=name,
                )
                return target, result
            except UpstreamError as exc:
                last = exc
                if not _falls_back(exc) or time.monotonic() >= deadline:
                    break
            finally:
                if live is not None:
                    live.leave(name)
        assert last is not None
        raise last

    def _finish(
        self, record: CallRecord, ctx: RequestContext, target: Target | None, usage: Body | None,
        spent_usd: float = 0.0,
    ) -> None:
        """Complete and log the record; `spent_usd`: what answers that were not used cost."""
        record.latency_ms = (time.perf_counter() - ctx.started) * 1000
        if usage:
            record.prompt_tokens = usage.get("prompt_tokens")
            record.completion_tokens = usage.get("completion_tokens")
            if target is not None:
                cost = target.cost(record.prompt_tokens, record.completion_tokens)
                record.cost_usd = None if cost is None else cost + spent_usd
        if self.router is not None:
            self.router.finished(record)
        self.sink(record)

    def _fail(self, record: CallRecord, ctx: RequestContext, exc: UpstreamError) -> GatewayError:
        """Log the failed call and return the client-facing error, carrying the identity headers."""
        err = to_gateway_error(exc)
        record.status, record.error = err.status, err.message
        self._finish(record, ctx, None, None)
        err.headers.update(identity_headers(record))
        if len(record.attempts) > 1:
            # the gateway already retried: an SDK retrying too would multiply the attempts
            err.headers["x-should-retry"] = "false"
        return err

    # -- chat, not streamed -----------------------------------------------------------------
    async def chat(self, route: RouteRuntime, body: Body, ctx: RequestContext,
                   via: Via | None = None) -> tuple[Body, CallRecord]:
        """A non-streamed chat completion; raises GatewayError after logging the failure."""
        decision, record, messages, memory = await self._plan(route, body, ctx)

        async def attempt(target: Target, timeout: float) -> UpstreamResponse:
            upstream = self._upstream_body(target, body, messages)
            record.request = upstream
            provider = via(target.provider) if via is not None else target.provider
            resp = await provider.chat(self._call(target.provider, upstream, timeout))
            check_chat(resp.body)  # inside the attempt: a malformed answer is logged, retried, failed over
            return resp

        try:
            target, resp = await self._over_targets(route, decision.order, record, attempt)
        except UpstreamError as exc:
            raise self._fail(record, ctx, exc) from None
        spent = 0.0
        if (route.escalate_to is not None and target.variant != route.escalate_to and memory is not None
                and disagrees(resp.body, memory)):
            target, resp, spent = await self._escalate(route, route.escalate_to, memory, record, target, resp,
                                                       attempt)
        out = resp.body
        ctx.upstream_headers = resp.headers
        out["id"] = ctx.call_id
        record.response = out
        record.ttft_ms = None
        self._finish(record, ctx, target, out.get("usage"), spent)
        return out, record

    async def _escalate(
        self, route: RouteRuntime, to: str, memory: Memory, record: CallRecord, first: Target,
        answer: UpstreamResponse,
        attempt: Callable[[Target, float], Awaitable[UpstreamResponse]],
    ) -> tuple[Target, UpstreamResponse, float]:
        """Re-ask variant `to`; returns the answer to serve and what the unused one cost. If `to`
        fails, the first answer is still an answer: it is served, and nothing was wasted."""
        try:
            target, resp = await self._over_targets(route, (to,), record, attempt)
        except UpstreamError as exc:
            record.variant, record.model = first.variant, first.model  # _over_targets moved them to `to`
            record.policy_reason += f"; escalation to {to} failed ({exc.status or 'no response'})"
            return first, answer, 0.0
        first_text, second_text = answer_text(answer.body), answer_text(resp.body)
        same = first_text is not None and second_text is not None and same_answer(first_text, second_text, memory)
        record.policy_reason += (f"; {first.variant}'s answer disagreed with memory: escalated to {to}, "
                                 f"which answered {'the same' if same else 'differently'}")
        usage = answer.body.get("usage") or {}
        spent = first.cost(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        record.escalation = Escalation(first.variant, first.model, spent, same)
        return target, resp, spent or 0.0

    # -- chat, streamed --------------------------------------------------------------------
    async def chat_stream(
        self, route: RouteRuntime, body: Body, ctx: RequestContext, via: Via | None = None,
    ) -> tuple[AsyncIterator[bytes], CallRecord]:
        """Open a stream: fails over (retries, fallbacks) until a first chunk arrives, then relays.

        Raises GatewayError when no variant produced a first chunk; after that, a broken
        upstream ends the client's stream with an error event instead of a clean end.
        """
        decision, record, messages, _ = await self._plan(route, body, ctx)  # streams are not escalated
        # one total deadline from the first attempt to the stream's last chunk: an upstream that
        # drips chunks or keep-alive comments cannot hold a stream open past it
        deadline = time.monotonic() + route.retries.deadline_s
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def attempt(target: Target, timeout: float) -> tuple[AsyncIterator[list[Body]], list[Body]]:
            upstream = self._upstream_body(target, body, messages)
            # Always ask for usage: the call log needs tokens and cost even when the client does not.
            upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            record.request = upstream
            provider = via(target.provider) if via is not None else target.provider
            call = self._call(target.provider, upstream, timeout)
            it, first = await open_stream(provider, call, timeout)
            ctx.upstream_headers = call.received_headers  # the served stream's request id and limits
            return it, first

        try:
            target, (it, first) = await self._over_targets(route, decision.order, record, attempt, deadline)
        except UpstreamError as exc:
            raise self._fail(record, ctx, exc) from None
        return relay(it, first, record, ctx.call_id, ctx.started, wants_usage, deadline, self.live,
                     target.provider.name, lambda usage: self._finish(record, ctx, target, usage)), record

    # -- embeddings ---------------------------------------------------------------------------
    async def embeddings(self, route: RouteRuntime, body: Body, ctx: RequestContext) -> tuple[Body, CallRecord]:
        """Embeddings through the route's policy, retries and fallbacks; logged as metadata."""
        decision = route.policy.choose(Features(route=route.name, user=ctx.user, key_id=ctx.key_name,
                                                prompt_chars=0, n_messages=0, has_tools=False))
        record = CallRecord(id=ctx.call_id, route=route.name, variant=decision.variant,
                            model=route.targets[decision.variant].model, endpoint="embeddings",
                            key_id=ctx.key_name, user=ctx.user, session_id=ctx.session_id,
                            policy_reason=decision.reason, no_log=True)
        n_inputs = len(body["input"]) if isinstance(body["input"], list) else 1

        async def attempt(target: Target, timeout: float) -> UpstreamResponse:
            upstream = self._upstream_body(target, body, None)
            record.request = {"model": upstream["model"], "inputs": n_inputs,
                              "encoding_format": upstream.get("encoding_format", "float")}
            resp = await target.provider.embeddings(self._call(target.provider, upstream, timeout))
            check_embeddings(resp.body)
            return resp

        try:
            target, resp = await self._over_targets(route, decision.order, record, attempt)
        except UpstreamError as exc:
            raise self._fail(record, ctx, exc) from None
        ctx.upstream_headers = resp.headers
        self._finish(record, ctx, target, resp.body.get("usage"))
        return resp.body, record
