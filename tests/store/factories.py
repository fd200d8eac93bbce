"""Realistic records for store and writer tests."""

from __future__ import annotations

from typing import Any

from gateway.store.records import Attempt, CallRecord, FeedbackRecord

T0 = 1_700_000_000.0
SYSTEM_5K = "You are the support assistant of Example Corp. Follow this policy.\n" + "policy line. " * 400


def make_call(
    i: int = 0,
    *,
    route: str = "support-bot",
    user: str | None = "u1",
    created_at: float | None = None,
    system: str = "Be brief.",
    attempts: int = 2,
    **kw: Any,
) -> CallRecord:
    """A chat call with `attempts` attempts (the last one succeeding)."""
    cid = kw.pop("id", f"chatcmpl-{i:06d}")
    return CallRecord(
        id=cid,
        route=route,
        variant="small",
        model="small",
        created_at=T0 + i if created_at is None else created_at,
        user=user,
        session_id=f"s{i % 3}",
        template_version="t1",
        policy_reason="static",
        request={
            "model": route,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"question {i}?"},
            ],
            "temperature": 0.2,
        },
        response={"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]},
        prompt_tokens=120,
        completion_tokens=8,
        cost_usd=0.00002,
        latency_ms=312.5,
        attempts=[
            Attempt(
                model="small",
                provider="openai",
                status=200 if a == attempts - 1 else 503,
                error=None if a == attempts - 1 else "upstream 503",
                latency_ms=100.0 + a,
                started_at=T0 + i + a / 10,
            )
            for a in range(attempts)
        ],
        **kw,
    )


def make_feedback(call_id: str, n: int = 0, **kw: Any) -> FeedbackRecord:
    """A thumbs-up on `call_id`."""
    kw.setdefault("created_at", T0 + 10_000 + n)
    kw.setdefault("rating", 1)
    return FeedbackRecord(call_id=call_id, id=kw.pop("id", f"fb-{call_id}-{n}"), **kw)
