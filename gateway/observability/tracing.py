"""OpenTelemetry traces: a server span per request, GenAI attributes, child spans per upstream attempt
and for retrieval, and a span per learning cycle.

Off by default (`[observability] tracing`). The span's context comes from the request's
`traceparent` header (W3C trace context), so a client's trace continues through the gateway. The
GenAI semantic-convention attributes (gen_ai.operation.name, gen_ai.system, gen_ai.request.model,
gen_ai.response.model, gen_ai.usage.input_tokens / output_tokens) are set when the call's record
reaches the gateway's sink, and each upstream attempt becomes a child span from the times the
record holds: nothing is added to the request path beyond starting and ending the server span.
Retrieval (templates and examples) becomes a child span from the times the pipeline hands `step`
(one context-variable read when tracing is off); a learning cycle is a span of its own
(`cycle_span`: a child of POST /admin/learn's request span, a root span when scheduled).
Spans are exported over OTLP/HTTP when `otlp_endpoint` is set (the `otel` extra); tests add an
in-memory exporter to `Tracing.provider`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config.settings import ObservabilitySettings
from gateway.store.records import CallRecord

log = logging.getLogger("flywheel.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER: DefaultGetter = DefaultGetter()
_NS = 1_000_000_000
_CURRENT: ContextVar[Tracing | None] = ContextVar("flywheel_tracing", default=None)  # the request's gateway


class Tracing:
    """The gateway's tracer provider (its own, not the process-global one) and its tracer."""

    def __init__(self, settings: ObservabilitySettings) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        if settings.otlp_endpoint:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.error("[observability] otlp_endpoint is set but the OTLP exporter is not installed "
                          "(pip install 'flywheel-gateway[otel]'): spans are not exported")
            else:
                self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
        self.tracer = self.provider.get_tracer("flywheel.gateway")

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        self.provider.shutdown()

    def call_finished(self, record: CallRecord) -> None:
        """GenAI attributes on the request's span, and a child span per upstream attempt."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        op = "chat" if record.endpoint == "chat" else "embeddings"
        span.update_name(f"{op} {record.route}")
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": op, "gen_ai.system": "flywheel", "gen_ai.request.model": record.route,
            "gen_ai.response.model": record.model, "gen_ai.response.id": record.id,
            "flywheel.route": record.route, "flywheel.variant": record.variant,
        }
        if record.prompt_tokens is not None:
            attrs["gen_ai.usage.input_tokens"] = record.prompt_tokens
        if record.completion_tokens is not None:
            attrs["gen_ai.usage.output_tokens"] = record.completion_tokens
        if record.cost_usd is not None:
            attrs["flywheel.cost_usd"] = record.cost_usd
        if record.ttft_ms is not None:
            attrs["flywheel.ttft_ms"] = record.ttft_ms
        span.set_attributes(attrs)
        if record.status != 200:
            span.set_status(Status(StatusCode.ERROR, record.error or str(record.status)))
        parent = trace.set_span_in_context(span)
        for i, a in enumerate(record.attempts):
            start = int(a.started_at * _NS)
            child = self.tracer.start_span(f"{op} {a.model}", context=parent, kind=SpanKind.CLIENT, start_time=start,
                                           attributes={"gen_ai.operation.name": op, "gen_ai.system": a.provider,
                                                       "gen_ai.request.model": a.model, "flywheel.attempt": i + 1})
            if a.status is not None:
                child.set_attribute("http.response.status_code", a.status)
            if a.error is not None:
                child.set_status(Status(StatusCode.ERROR, a.error[:200]))
            child.end(end_time=start + int(a.latency_ms * 1_000_000))


def traced() -> bool:
    """True when the current request is traced (a context-variable read: cheap when tracing is off)."""
    return _CURRENT.get() is not None


def step(name: str, start_ns: int, attributes: Mapping[str, Any]) -> None:
    """A step of the current request that just ended (started at `start_ns`, `time.time_ns()`), as a
    child span of the request's span; nothing when the request is not traced."""
    tracing = _CURRENT.get()
    if tracing is None:
        return
    parent = trace.get_current_span()
    if parent.is_recording():
        tracing.tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=start_ns,
                                  attributes=dict(attributes)).end()


@contextlib.contextmanager
def cycle_span(tracing: Tracing | None, route: str) -> Iterator[trace.Span | None]:
    """A span around one learning cycle of `route` (None when tracing is off); the caller adds
    what the cycle decided as attributes."""
    if tracing is None:
        yield None
        return
    with tracing.tracer.start_as_current_span(f"learn {route}", kind=SpanKind.INTERNAL,
                                              attributes={"flywheel.route": route}) as span:
        yield span


class TracingMiddleware:
    """A SERVER span around every HTTP request, continuing the caller's `traceparent`."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing
        self.tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}
        ctx = _PROPAGATOR.extract(carrier, getter=_GETTER) if carrier else None
        path: str = scope["path"]
        with self.tracer.start_as_current_span(f"{scope['method']} {path}", context=ctx, kind=SpanKind.SERVER,
                                               attributes={"http.request.method": scope["method"],
                                                           "url.path": path}) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            token = _CURRENT.set(self.tracing)
            try:
                await self.app(scope, receive, traced_send)
            finally:
                _CURRENT.reset(token)
