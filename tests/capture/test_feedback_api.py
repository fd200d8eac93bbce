"""POST /v1/feedback against the contracts in docs/architecture.md, through a real gateway and store."""

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


def chat(gw: RunningGateway, content: str = "hi", **kw: Any) -> str:
    """One chat completion through the gateway; returns its call id."""
    r = httpx.post(gw.v1 + "/chat/completions",
                   json={"model": "bot", "messages": [{"role": "user", "content": content}], **kw})
    assert r.status_code == 200, r.text
    call_id: str = r.headers["x-flywheel-call-id"]
    return call_id


def feedback(gw: RunningGateway, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(gw.v1 + "/feedback", content=body, headers={"content-type": "application/json"})
    return httpx.post(gw.v1 + "/feedback", json=body)


def stored_feedback(gw: RunningGateway, call_id: str, n: int) -> list[FeedbackRecord]:
    """The feedback rows of a call, once at least `n` are written."""
    rows: list[FeedbackRecord] = poll_store(gw.gateway.settings.store.url,
                                            lambda s: s.list_feedback(call_ids=[call_id]), lambda v: len(v) >= n)
    assert len(rows) >= n, f"only {len(rows)} feedback rows for {call_id}"
    return rows


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"rating": 1}, "call_id", "call_id"),
        ({"call_id": "chatcmpl-x"}, None, "rating"),
        ({"call_id": "chatcmpl-x", "rating": 2}, "rating", "rating"),
        ({"call_id": "chatcmpl-x", "rating": True}, "rating", "rating"),
        ({"call_id": "chatcmpl-x", "score": 1.5}, "score", "score"),
        ({"call_id": "chatcmpl-x", "signal": "meh"}, "signal", "signal"),
        ({"call_id": "chatcmpl-x", "rating": 1, "stars": 5}, "stars", "stars"),
        ({"call_id": "chatcmpl-x", "correction": ""}, "correction", "correction"),
        ({"call_id": "chatcmpl-x", "correction": "   "}, "correction", "correction"),
        ({"call_id": 42, "rating": 1}, "call_id", "call_id"),
        (b'{"call_id": "chatcmpl-x", "rating": 1', None, "JSON"),
        (b"[1, 2]", None, "object"),
    ],
    ids=["missing-call_id", "only-call_id", "rating-2", "rating-true", "score-1.5", "signal-meh",
         "unknown-field", "empty-correction", "blank-correction", "call_id-number", "malformed-json",
         "not-an-object"],
)
def test_malformed_feedback_is_400_naming_the_field(gw: RunningGateway, body: Any, param: str | None,
                                                    words: str) -> None:
    r = feedback(gw, body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert words in err["message"]


def test_unknown_call_id_is_404(gw: RunningGateway) -> None:
    r = feedback(gw, {"call_id": "chatcmpl-doesnotexist", "rating": 1})
    assert r.status_code == 404
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("call_id", "call_not_found")


def test_201_returns_ids_and_the_row_is_stored(gw: RunningGateway) -> None:
    call_id = chat(gw)
    body = {"call_id": call_id, "rating": -1, "score": 0.25, "signal": "copied", "comment": "too short",
            "user": "end-user-7"}
    r = feedback(gw, body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["call_id"] == call_id and out["id"].startswith("fb-")
    [row] = stored_feedback(gw, call_id, 1)
    assert (row.id, row.rating, row.score, row.signal, row.comment, row.user, row.source) == (
        out["id"], -1, 0.25, "copied", "too short", pseudonym(gw, "end-user-7"), "user")
    assert row.user != "end-user-7"  # the end-user id is stored pseudonymised


def test_feedback_right_after_the_call_is_accepted(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    # A 2 s flush window and big batches: the call is still in the writer's queue when feedback comes.
    cfg = base_config(fake_upstream, tmp_path)
    cfg["store"].update(flush_ms=2000, batch_size=10_000)
    gw = make_gateway(cfg)
    call_id = chat(gw)
    assert gw.gateway.writer is not None and gw.gateway.writer.pending(call_id)
    r = feedback(gw, {"call_id": call_id, "rating": 1, "correction": "Hello!"})
    assert r.status_code == 201, r.text
    [row] = stored_feedback(gw, call_id, 1)
    assert row.rating == 1 and row.correction == "Hello!"
    assert row.correction_diff is not None  # the call was flushed first, so the diff could be made


def test_correction_stores_its_diff(gw: RunningGateway) -> None:
    call_id = chat(gw, "what is the capital of France")
    r = feedback(gw, {"call_id": call_id, "correction": "The capital of France is Paris."})
    assert r.status_code == 201
    [row] = stored_feedback(gw, call_id, 1)
    assert row.signal == "edited"  # a correction without a signal is an edit
    assert row.correction == "The capital of France is Paris."
    assert row.correction_diff is not None
    assert "-You said: what is the capital of France" in row.correction_diff
    assert "+The capital of France is Paris." in row.correction_diff


def test_several_rows_per_call_are_kept(gw: RunningGateway) -> None:
    call_id = chat(gw)
    bodies: list[dict[str, Any]] = [{"rating": 1}, {"rating": -1}, {"correction": "first fix"},
                                    {"correction": "second fix"}, {"signal": "used"}]
    ids = []
    for b in bodies:
        r = feedback(gw, {"call_id": call_id, **b})
        assert r.status_code == 201
        ids.append(r.json()["id"])
    rows = stored_feedback(gw, call_id, len(bodies))
    assert sorted(r.id for r in rows) == sorted(ids)
    assert [r.rating for r in rows if r.rating is not None] == [1, -1]
    assert [r.correction for r in rows if r.correction] == ["first fix", "second fix"]
