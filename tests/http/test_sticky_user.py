"""Canaries stick to the user as the store holds it (its keyed pseudonym), not the raw `user`
field: every replica (same key) and the stored calls agree on it, and policy pins still name the
raw user."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from starlette.requests import Request

from gateway.config.settings import parse_settings
from gateway.http.auth import ANONYMOUS
from gateway.http.openai import request_context
from gateway.serve.augment import Augmenter, LoadedTemplate, RouteServing, ServingSet, actor_of
from gateway.serve.pipeline import RequestContext
from gateway.serve.policy_versions import Canary, PolicyVersions
from gateway.serve.templating import CompiledTemplate, Template
from policies.base import Features
from policies.learned import LearnedPolicy
from tests.conftest import base_config


def test_the_request_context_carries_the_stored_pseudonym(make_gateway: Any, fake_upstream: str,
                                                          tmp_path: Any) -> None:
    gw = make_gateway(base_config(fake_upstream, tmp_path))
    app = SimpleNamespace(state=SimpleNamespace(gateway=gw.gateway))
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "app": app})
    ctx = request_context(request, ANONYMOUS, {"user": "alice@example.com"}, "chatcmpl")
    pseudonym = gw.gateway.preparer.pseudonymizer().user("alice@example.com")
    assert ctx.user == "alice@example.com"  # pins and the request itself keep the raw value
    assert ctx.stored_user == pseudonym != ctx.user
    assert request_context(request, ANONYMOUS, {}, "chatcmpl").stored_user is None


async def test_template_and_policy_canaries_stick_to_the_stored_user() -> None:
    assert actor_of(RequestContext("c1", user="alice@example.com", stored_user="u-1")) == "u:u-1"
    settings = parse_settings({"providers": {"p": {"kind": "fake"}}, "models": {"m": {"provider": "p", "name": "m"}},
                               "routes": {"bot": {"variants": ["m"]}}})
    aug = Augmenter(lambda: settings, lambda: None)
    aug.install("bot", RouteServing(ServingSet(LoadedTemplate("t1", CompiledTemplate(Template("Current."))), None),
                                    LoadedTemplate("t2", CompiledTemplate(Template("Canary."))), None, 0.5))
    msgs = [{"role": "user", "content": "hi"}]
    # the same stored pseudonym lands on one side whatever raw value a client sent with it
    sides = set()
    for i in range(20):
        a = await aug.augment("bot", msgs, RequestContext(f"c{i}", user=f"raw-{i}", stored_user="u-same"))
        assert a is not None
        sides.add(a.template_version)
    assert len(sides) == 1

    live, canary = LearnedPolicy(["a", "b"], explore=0.0), LearnedPolicy(["a", "b"], explore=0.0)
    versions = PolicyVersions(lambda: None)  # type: ignore[arg-type, return-value]  # share recorded: no settings read
    versions.canaries["bot"] = Canary("p2", {}, canary, live, share=0.5)
    arms = {versions.arm("bot", live, Features("bot", f"raw-{i}", None, 10, 1, False), "u-same")[1]
            for i in range(20)}
    assert len(arms) == 1
    spread = {versions.arm("bot", live, Features("bot", "raw", None, 10, 1, False), f"u-{i}")[1] for i in range(40)}
    assert spread == {None, "p2"}  # and it is the pseudonym that decides
