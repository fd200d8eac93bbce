"""Everything derived from `Settings` that a request needs: providers, targets, route policies.

A `Runtime` is immutable once built. A config reload builds a new one (reusing provider
objects whose settings did not change, so their connection pools survive) and swaps it in;
a request keeps the runtime it started with.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config.providers import AzureProviderSettings, FakeProviderSettings, OpenAIProviderSettings
from gateway.config.settings import ConfigError, Price, ProviderSettings, RetrySettings, RouteSettings, Settings
from gateway.errors import model_not_found
from gateway.providers.base import Provider
from gateway.serve.route_policy import build_route_policy
from policies import build_policy
from policies.base import Policy
from policies.static import StaticPolicy

log = logging.getLogger("flywheel.runtime")


@dataclass(frozen=True, slots=True)
class Target:
    """One variant resolved to something callable."""

    variant: str
    model: str  # configured model name
    provider: Provider
    upstream_model: str  # the provider's model name
    params: dict[str, Any]
    price: Price | None

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        if self.price is None or prompt_tokens is None:
            return None
        return (prompt_tokens * self.price.input_per_mtok + (completion_tokens or 0) * self.price.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    name: str
    targets: Mapping[str, Target]  # by variant name; fallbacks that are plain models included
    policy: Policy
    retries: RetrySettings
    settings: RouteSettings | None  # None for a configured model used directly (pass-through)
    escalate_to: str | None = None  # variant that re-answers what memory disagrees with (settings.escalate)

    def pinned(self, variant: str) -> RouteRuntime:
        """This route with every request sent to `variant` and no fallback (evaluation replays:
        an answer from another variant would be scored as this one's)."""
        if variant not in self.targets:
            raise ValueError(f"route {self.name!r} has no variant {variant!r}")
        return replace(self, policy=StaticPolicy(variant), escalate_to=None)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    providers: Mapping[str, Provider]
    routes: Mapping[str, RouteRuntime]
    key_hashes: Mapping[str, str] = field(default_factory=dict)  # sha256 hex -> key name

    def resolve(self, model: str) -> RouteRuntime:
        """The route a request's `model` names (a route, or a configured model passed straight through)."""
        route = self.routes.get(model)
        if route is None:
            raise model_not_found(model)
        return route


def build_provider(name: str, ps: ProviderSettings, env: Mapping[str, str]) -> Provider:
    """One provider adapter for one `[providers.NAME]` table (one settings model per kind)."""
    if isinstance(ps, FakeProviderSettings):
        from gateway.providers.fakes.provider import FakeProvider

        return FakeProvider(name, latency_ms=ps.latency_ms, error_rate=ps.error_rate, seed=ps.seed,
                            replies=ps.replies, hard=ps.hard, hard_reply=ps.hard_reply, responses=ps.responses)
    api_key = env.get(ps.api_key_env) if ps.api_key_env else None
    if ps.api_key_env and not api_key:
        log.warning("providers.%s.api_key_env: environment variable %s is not set", name, ps.api_key_env)
    if isinstance(ps, OpenAIProviderSettings | AzureProviderSettings):
        from gateway.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(
            name, base_url=ps.base_url, api_key=api_key, headers=ps.headers,
            max_connections=ps.max_connections,
            azure_api_version=ps.api_version if isinstance(ps, AzureProviderSettings) else None,
            proxy=ps.proxy, timeout_s=ps.timeout_s, responses=ps.responses,
        )
    # litellm is imported only when such a provider is configured: it costs ~1 s and ~100 MB.
    if importlib.util.find_spec("litellm") is None:  # an optional extra: say so rather than crash on import
        raise ConfigError("config", [f"providers.{name}.kind: 'litellm' needs the litellm extra: "
                                     "pip install 'flywheel-gateway[litellm]'"])
    from gateway.providers.litellm_provider import LiteLLMProvider

    extra = {**ps.extra, "extra_headers": ps.headers} if ps.headers else dict(ps.extra)
    return LiteLLMProvider(name, api_key=api_key, base_url=ps.base_url, extra=extra, timeout_s=ps.timeout_s)


def _route_runtime(name: str, rs: RouteSettings, settings: Settings, providers: Mapping[str, Provider],
                   previous: RouteRuntime | None = None) -> RouteRuntime:
    targets: dict[str, Target] = {}
    for v in rs.variant_list():
        m = settings.models[v.model]
        targets[v.name] = Target(v.name, v.model, providers[m.provider], m.name,
                                 {**m.params, **rs.params, **v.params}, m.price)
    for fb in rs.fallbacks:
        if fb not in targets:
            m = settings.models[fb]
            targets[fb] = Target(fb, fb, providers[m.provider], m.name, {**m.params, **rs.params}, m.price)
    variants = [v.name for v in rs.variant_list()]
    try:  # a learned policy keeps what the previous runtime's policy learned (gateway/serve/route_policy.py)
        policy = build_route_policy(name, rs.policy.kind, rs.policy.params(), variants=variants,
                                    fallbacks=rs.fallbacks, learn=rs.learn,
                                    previous=previous.policy if previous is not None else None)
    except ValueError as exc:
        raise ConfigError("config", [f"routes.{name}.policy: {exc}"]) from None
    return RouteRuntime(name, targets, policy, rs.retries or settings.retries, rs,
                        escalate_to=rs.escalate.to if rs.escalate is not None else None)


def build_runtime(
    settings: Settings,
    previous: Runtime | None = None,
    env: Mapping[str, str] | None = None,
) -> Runtime:
    """Build a runtime, reusing the previous runtime's providers whose settings are unchanged."""
    env = os.environ if env is None else env
    providers: dict[str, Provider] = {}
    for name, ps in settings.providers.items():
        old = previous.settings.providers.get(name) if previous else None
        if previous is not None and old == ps and name in previous.providers:
            providers[name] = previous.providers[name]
        else:
            providers[name] = build_provider(name, ps, env)
    routes: dict[str, RouteRuntime] = {}
    for name, m in settings.models.items():
        target = Target(name, name, providers[m.provider], m.name, dict(m.params), m.price)
        routes[name] = RouteRuntime(name, {name: target}, build_policy("static", variants=[name], fallbacks=[]),
                                    settings.retries, None)
    for name, rs in settings.routes.items():
        routes[name] = _route_runtime(name, rs, settings, providers,
                                      previous.routes.get(name) if previous is not None else None)
    key_hashes = {k.hash: name for name, k in settings.auth.keys.items()}
    return Runtime(settings, providers, routes, key_hashes)


async def close_unused(old: Runtime, new: Runtime | None) -> None:
    """Close the providers of `old` that `new` no longer uses."""
    keep = {id(p) for p in new.providers.values()} if new else set()
    for p in old.providers.values():
        if id(p) not in keep:
            await p.aclose()
