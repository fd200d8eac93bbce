"""bench/real/cache.py: repeated model requests are answered once by the upstream."""

from __future__ import annotations

from pathlib import Path

import httpx

from bench.real.cache import ResponseCache
from tests.conftest import received, script


def ask(base_url: str, model: str, text: str, user: str = "u1") -> httpx.Response:
    return httpx.post(f"{base_url}/chat/completions", timeout=10,
                      json={"model": model, "user": user, "messages": [{"role": "user", "content": text}]})


def test_a_repeated_request_is_served_from_the_cache_even_across_restarts(fake_upstream: str, tmp_path: Path) -> None:
    with ResponseCache(fake_upstream, tmp_path / "c.sqlite") as cache:
        first = ask(cache.base_url, "cache-a", "hello")
        again = ask(cache.base_url, "cache-a", "hello", user="someone else")  # `user` does not change answers
        other = ask(cache.base_url, "cache-a", "hello there")
        assert (cache.hits, cache.misses) == (1, 2)
    with ResponseCache(fake_upstream, tmp_path / "c.sqlite") as cache:
        later = ask(cache.base_url, "cache-a", "hello")
        assert (cache.hits, cache.misses) == (1, 0)
    assert first.status_code == again.status_code == other.status_code == later.status_code == 200
    assert first.json() == again.json() == later.json() != other.json()
    assert len(received(fake_upstream, "cache-a")) == 2


def test_errors_pass_through_and_are_not_kept(fake_upstream: str, tmp_path: Path) -> None:
    script(fake_upstream, "cache-b", {"status": 503, "message": "busy"})
    with ResponseCache(fake_upstream, tmp_path / "c.sqlite") as cache:
        failed = ask(cache.base_url, "cache-b", "hi")
        retried = ask(cache.base_url, "cache-b", "hi")
        assert (cache.hits, cache.misses) == (0, 2)
    assert failed.status_code == 503 and "busy" in failed.text
    assert retried.status_code == 200
