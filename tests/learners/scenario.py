"""A small support-bot world for learning tests: questions, true answers, simulated users.

Three topics, each asked in several wordings (every wording of a topic shares at least two content
words with the others, which is what the fake model's in-context learning needs), one true
answer per topic, and an unseen paraphrase per topic for the "did it learn" check.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import write_toml  # noqa: F401 - re-exported for the learner tests

ROUTE = "support"

TOPICS: dict[str, tuple[list[str], str]] = {
    "returns": ([
        "How long do I have to return an item?",
        "What is the time limit to return an item?",
        "How many days do I have to return an item?",
        "Until when can I return an item I bought?",
        "Is there a deadline to return an item?",
        "How late can I return an item?",
    ], "You can return items within 14 days of delivery for a full refund."),
    "shipping": ([
        "How much does shipping cost?",
        "What does shipping cost for my order?",
        "What are the shipping costs?",
        "Shipping cost to Germany?",
        "Tell me the shipping cost please",
        "How high is the shipping cost?",
    ], "Shipping is free on orders over 50 euros, otherwise it costs 4.90 euros."),
    "password": ([
        "How do I reset my password?",
        "I forgot my password, how can I reset it?",
        "Steps to reset a password?",
        "Please help me reset my password",
        "Where do I reset my password?",
        "Password reset, how does it work?",
    ], "Use the Forgot password link on the sign-in page to reset it by email."),
}

UNSEEN: dict[str, str] = {
    "returns": "What's the deadline for returning an item I ordered?",
    "shipping": "Could you tell me what shipping will cost me?",
    "password": "I need to reset the password of my account",
}

POISON = "Returns are not accepted, all sales are final."

SEED_TEMPLATE = "You are the support assistant of {{ route }}. Today is {{ today }}. Answer briefly.\n"



def truth(topic: str) -> str:
    return TOPICS[topic][1]


def topic_of(question: str) -> str:
    for topic, (questions, _) in TOPICS.items():
        if question in questions or question == UNSEEN[topic]:
            return topic
    raise KeyError(question)


def config(upstream: str, tmp: Path, **learners: Any) -> dict[str, Any]:
    """A gateway config with the support route, its seed template and fast learning settings."""
    from tests.conftest import base_config

    tpl = tmp / "support.md"
    tpl.write_text(SEED_TEMPLATE, encoding="utf-8")
    cfg = base_config(upstream, tmp)
    cfg["routes"] = {ROUTE: {"variants": ["model-a"], "template": str(tpl),
                             "retrieval": {"k": 3, "min_score": 0.2}}}
    # Held-out share 0.5 and min_samples 2: call ids are random, so the seeded split is too; with
    # 18 corrections fewer than 2 held-out calls happens once in ~15,000 runs.
    cfg["learners"] = {"enabled": False, "embedder": "hashing", "canary_share": 0.5, "min_samples": 2,
                       "min_slice_samples": 3, "canary_min_feedback": 6, "heldout_share": 0.5,
                       "demo_trials": 3, "max_demos": 3, **learners}
    return cfg


@dataclass
class Client:
    """Talks to a running gateway as users and as the admin (one pooled connection: a new httpx
    client per request costs ~70 ms of TLS-context setup)."""

    url: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=300))

    def ask(self, user: str, question: str) -> tuple[str, str, httpx.Response]:
        r = self.http.post(f"{self.url}/v1/chat/completions",
                           json={"model": ROUTE, "user": user, "messages": [{"role": "user", "content": question}]})
        assert r.status_code == 200, r.text
        return r.json()["id"], r.json()["choices"][0]["message"]["content"], r

    def feedback(self, call_id: str, **fields: Any) -> None:
        r = self.http.post(f"{self.url}/v1/feedback", json={"call_id": call_id, **fields})
        assert r.status_code == 201, r.text

    def learn(self) -> dict[str, Any]:
        r = self.http.post(f"{self.url}/admin/learn", json={"route": ROUTE})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(f"{self.url}{path}", params=params)
        assert r.status_code == 200, r.text
        return r.json()


def correct_everything(c: Client, prefix: str = "u") -> int:
    """Every wording of every topic asked once by its own user, who corrects the answer."""
    n = 0
    for topic, (questions, answer) in TOPICS.items():
        for i, q in enumerate(questions):
            call_id, got, _ = c.ask(f"{prefix}-{topic}-{i}", q)
            if got != answer:
                c.feedback(call_id, correction=answer)
                n += 1
    return n


def judged_traffic(c: Client, users: int, prefix: str, answers: dict[str, str] | None = None) -> dict[str, int]:
    """`users` users each ask one question and rate the answer by the truth (+1 / -1).

    Returns how many answers were right and wrong (`answers` overrides the truth per topic).
    """
    out = {"right": 0, "wrong": 0}
    wordings = itertools.cycle([q for qs, _ in TOPICS.values() for q in qs])
    for i in range(users):
        q = next(wordings)
        topic = topic_of(q)
        call_id, got, _ = c.ask(f"{prefix}-{i}", q)
        right = got == (answers or {}).get(topic, truth(topic))
        out["right" if right else "wrong"] += 1
        c.feedback(call_id, rating=1 if right else -1)
    return out
