"""Implicit signals through the gateway: a regeneration and a rephrasing each become an inferred
feedback row on the earlier call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.store.records import FeedbackRecord
from tests.capture.conftest import poll_store, pseudonym
from tests.conftest import RunningGateway, base_config


@pytest.fixture
def gw(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> RunningGateway:
    gateway: RunningGateway = make_gateway(base_config(fake_upstream, tmp_path))
    return gateway


def chat(gw: RunningGateway, content: str, user: str | None) -> str:
    body: dict[str, Any] = {"model": "bot", "messages": [{"role": "user", "content": content}]}
    if user is not None:
        body["user"] = user
    r = httpx.post(gw.v1 + "/chat/completions", json=body)
    assert r.status_code == 200, r.text
    call_id: str = r.headers["x-flywheel-call-id"]
    return call_id


def inferred_on(gw: RunningGateway, call_id: str) -> list[FeedbackRecord]:
    rows: list[FeedbackRecord] = poll_store(
        gw.gateway.settings.store.url, lambda s: s.list_feedback(call_ids=[call_id], source="inferred"),
        lambda v: len(v) >= 1, timeout=10)
    return rows


def test_regeneration_is_inferred_on_the_earlier_call(gw: RunningGateway) -> None:
    first = chat(gw, "Write a haiku about the sea", "alice")
    second = chat(gw, "Write a haiku about the sea", "alice")
    [fb] = inferred_on(gw, first)
    assert (fb.signal, fb.source, fb.related_call_id, fb.user) == ("regenerated", "inferred", second,
                                                                      pseudonym(gw, "alice"))


def test_rephrasing_is_inferred_on_the_earlier_call(gw: RunningGateway) -> None:
    first = chat(gw, "How do I reset my password on the mobile app?", "bob")
    second = chat(gw, "How can I reset my password in the mobile app please?", "bob")
    [fb] = inferred_on(gw, first)
    assert (fb.signal, fb.source, fb.related_call_id) == ("rephrased", "inferred", second)


def test_other_users_and_unrelated_prompts_infer_nothing(gw: RunningGateway) -> None:
    a = chat(gw, "Write a haiku about the sea", "carol")
    chat(gw, "Write a haiku about the sea", "dave")  # another user: not a regeneration of carol's
    b = chat(gw, "What is the boiling point of water at sea level?", "carol")  # unrelated follow-up
    marker = chat(gw, "Write a haiku about the sea", "erin")
    chat(gw, "Write a haiku about the sea", "erin")  # the one regeneration: proves the writer got this far
    assert [f.signal for f in inferred_on(gw, marker)] == ["regenerated"]
    url = gw.gateway.settings.store.url
    rows = poll_store(url, lambda s: s.list_feedback(call_ids=[a, b], source="inferred"), lambda v: True)
    assert rows == []
