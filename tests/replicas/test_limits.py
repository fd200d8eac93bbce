"""Shared, exact limits on Redis: two gateways on one Redis enforce one limit; tokens are reserved
before the call; x-ratelimit-* headers; 429 with Retry-After; feedback and /v1/models are free;
an unreachable Redis fails open or closed as configured."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.limits import Bucket, LocalLimiter
from tests.conftest import free_port
from tests.replicas.conftest import REDIS_URL, keyed_config


def chat(url: str, key: str, content: str = "hi", **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "bot", "messages": [{"role": "user", "content": content}], **extra}, timeout=20)


def test_shared_request_limit_across_two_gateways_on_one_redis(fake_upstream: str, tmp_path: Path, make_gateway: Any,
                                                                prefix: str) -> None:
    limits = {"redis_url": REDIS_URL, "prefix": prefix}
    a = make_gateway(keyed_config(fake_upstream, tmp_path / "a", {"app": {"rpm": 5}}, limits=limits))
    b = make_gateway(keyed_config(fake_upstream, tmp_path / "b", {"app": {"rpm": 5}}, limits=limits))
    answers = [chat(gw.url, "sk-app") for _ in range(4) for gw in (a, b)]
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) == 5 and len(refused) == 3  # one limit for both replicas, not 5 each
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["4", "3", "2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "5" for r in ok)
    assert ok[0].headers["x-ratelimit-reset-requests"].endswith("s")
    for r in refused:
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 60
    # feedback and the model list do not consume the chat limit
    fb = httpx.post(f"{a.url}/v1/feedback", headers={"authorization": "Bearer sk-app"},
                    json={"call_id": ok[0].json()["id"], "rating": 1}, timeout=10)
    assert fb.status_code == 201
    assert httpx.get(f"{b.url}/v1/models", headers={"authorization": "Bearer sk-app"}).status_code == 200


def test_tokens_are_reserved_before_the_call_so_concurrency_cannot_overshoot(
        fake_upstream: str, tmp_path: Path, make_gateway: Any, prefix: str) -> None:
    tpm = 300
    limits = {"redis_url": REDIS_URL, "prefix": prefix}
    a = make_gateway(keyed_config(fake_upstream, tmp_path / "a", {"app": {"tpm": tpm}}, limits=limits))
    b = make_gateway(keyed_config(fake_upstream, tmp_path / "b", {"app": {"tpm": tpm}}, limits=limits))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            reqs = [client.post(f"{gw.url}/v1/chat/completions", headers={"authorization": "Bearer sk-app"},
                                json={"model": "bot", "max_tokens": 40,
                                      "messages": [{"role": "user", "content": f"question number {i}"}]})
                    for i in range(25) for gw in (a, b)]
            return list(await asyncio.gather(*reqs))

    answers = asyncio.run(burst())
    ok = [r for r in answers if r.status_code == 200]
    assert all(r.status_code in (200, 429) for r in answers)
    # each call reserves ~5 prompt + 40 completion tokens (at most 6 in flight), settled to what it used
    assert 1 <= len(ok) < len(answers)
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert used <= tpm  # before: 50 concurrent calls all passed and used 6x the limit
    refused = next(r for r in answers if r.status_code == 429)
    assert "Tokens per minute" in refused.json()["error"]["message"] and "retry-after" in refused.headers


def test_route_and_per_user_limits(fake_upstream: str, tmp_path: Path, make_gateway: Any, prefix: str) -> None:
    limits = {"redis_url": REDIS_URL, "prefix": prefix, "routes": {"bot": {"rpm": 3}}, "per_user": {"rpm": 1}}
    gw = make_gateway(keyed_config(fake_upstream, tmp_path, {"x": {}, "y": {}}, limits=limits))
    assert chat(gw.url, "sk-x", user="u1").status_code == 200
    assert chat(gw.url, "sk-x", user="u1").status_code == 429  # u1 of key x: once a minute
    assert chat(gw.url, "sk-y", user="u1").status_code == 200  # another key's u1 is another user
    assert chat(gw.url, "sk-x", user="u2").status_code == 200
    r = chat(gw.url, "sk-y", user="u3")
    assert r.status_code == 429 and "route:bot" in r.json()["error"]["message"]  # the route's 3 per minute


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unreachable_redis_fails_open_or_closed_and_logs_once(
        fake_upstream: str, tmp_path: Path, make_gateway: Any, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    limits = {"redis_url": f"redis://127.0.0.1:{free_port()}/0", "on_redis_error": mode}
    gw = make_gateway(keyed_config(fake_upstream, tmp_path, {"app": {"rpm": 1}}, limits=limits))
    with caplog.at_level(logging.ERROR, logger="flywheel.limits"):
        codes = [chat(gw.url, "sk-app").status_code for _ in range(3)]
    assert codes == ([200] * 3 if mode == "open" else [503] * 3)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


async def test_local_limiter_is_exact_per_window_and_settles_reservations() -> None:
    now = [1000.0]
    lim = LocalLimiter(clock=lambda: now[0])
    b = [Bucket("key:k", rpm=None, tpm=100)]
    first = await lim.admit(b, 60, None, "c1")
    assert first.allowed and first.headers["x-ratelimit-remaining-tokens"] == "40"
    assert not (await lim.admit(b, 60, None, "c2")).allowed  # 60 reserved + 60 > 100
    assert first.reservation is not None
    lim.settle(first.reservation, 10)  # the call used 10: 90 free again
    assert (await lim.admit(b, 60, None, "c3")).allowed
    refused = await lim.admit(b, 60, None, "c4")
    assert refused.refusal == "tokens" and refused.retry_after_s == pytest.approx(60.0)
    now[0] += 60.5
    assert (await lim.admit(b, 60, None, "c5")).allowed
