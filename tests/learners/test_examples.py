"""ExampleIndex query/serialisation, dedupe, and few-shot message assembly (hashing embedder)."""

from __future__ import annotations

import json

import pytest

from retrieval.embeddings import HashingEmbedder
from retrieval.examples import Example, ExampleIndex, dedupe, few_shot_messages, with_few_shot, without_vectors


def ex(i: int, text: str, out: str = "", t: float = 0.0, source: str = "rated") -> Example:
    return Example(f"ex{i}", text, out or f"answer {i}", f"call{i}", source, t)


EXAMPLES = [
    ex(0, "How do I reset my password?", "Use the 'Forgot password' link."),
    ex(1, "Cancel my subscription please", "Go to Billing > Cancel."),
    ex(2, "What are your opening hours on Sunday?", "We are closed on Sundays."),
    ex(3, "Where is my parcel? The tracking number does not work", "Tracking updates within 24h."),
]


def test_query_returns_the_paraphrase_example() -> None:
    emb = HashingEmbedder()
    index = ExampleIndex.build(EXAMPLES, emb)
    [qv] = emb.embed(["i want to reset the password of my account"])
    hits = index.query(qv, k=2, min_score=-1.0)
    assert hits[0][0] == EXAMPLES[0]
    assert hits[0][1] > hits[1][1]
    assert index.query(qv, k=4, min_score=0.99) == []


def test_artifact_round_trip_is_json_safe_and_checks_embedder() -> None:
    emb = HashingEmbedder()
    index = ExampleIndex.build(EXAMPLES, emb)
    manifest, data = index.to_artifact()
    manifest = json.loads(json.dumps(manifest))
    assert manifest["embedder"] == "hashing-256" and manifest["count"] == 4
    back = ExampleIndex.from_artifact(manifest, data, emb)
    [qv] = emb.embed(["cancel the subscription"])
    assert back.query(qv, k=3) == index.query(qv, k=3)
    assert back.examples == index.examples

    body = json.loads(json.dumps(index.to_body()))
    assert ExampleIndex.from_body(body).query(qv, k=3) == index.query(qv, k=3)

    with pytest.raises(ValueError, match="cannot be queried"):
        ExampleIndex.from_artifact(manifest, data, HashingEmbedder(dim=128))


def test_a_body_without_vectors_keeps_its_examples_and_is_rebuilt_by_its_own_embedder() -> None:
    emb = HashingEmbedder()
    index = ExampleIndex.build(EXAMPLES, emb)
    slim = without_vectors(json.loads(json.dumps(index.to_body())))
    assert "index_b64" not in slim and slim["count"] == 4 and len(slim["examples"]) == 4
    [qv] = emb.embed(["cancel the subscription"])
    assert ExampleIndex.from_body(slim, emb).query(qv, k=3) == index.query(qv, k=3)
    with pytest.raises(ValueError, match="needs its embedder"):
        ExampleIndex.from_body(slim)
    with pytest.raises(ValueError, match="needs its embedder"):
        ExampleIndex.from_body(slim, HashingEmbedder(dim=128))


def test_empty_example_index() -> None:
    emb = HashingEmbedder(dim=64)
    index = ExampleIndex.build([], emb)
    assert len(index) == 0 and index.dim == 64
    assert index.query(emb.embed(["anything"])[0]) == []


def test_dedupe_keeps_newest_of_near_duplicates_in_input_order() -> None:
    emb = HashingEmbedder()
    items = [
        ex(0, "How do I reset my password?", t=1.0),
        ex(1, "Cancel my subscription please", t=2.0),
        ex(2, "How do I reset my password??", "newer correction", t=5.0, source="correction"),
        ex(3, "how do i reset my password", t=3.0),
        ex(4, "What are your opening hours?", t=4.0),
    ]
    kept = dedupe(items, emb, threshold=0.9)
    assert [e.id for e in kept] == ["ex1", "ex2", "ex4"]
    assert dedupe(items, emb, threshold=1.01) == items  # nothing is that similar
    assert dedupe([], emb) == []


def test_dedupe_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.examples as mod

    monkeypatch.setattr(mod, "_DEDUPE_BLOCK", 2)
    emb = HashingEmbedder()
    items = [ex(i, "the very same question", t=float(i)) for i in range(5)] + [ex(9, "another one", t=0.5)]
    assert [e.id for e in dedupe(items, emb, threshold=0.95)] == ["ex4", "ex9"]


def test_few_shot_messages_put_best_hit_last() -> None:
    hits = [(EXAMPLES[0], 0.9), (EXAMPLES[1], 0.5)]
    msgs = few_shot_messages(hits)
    assert msgs == [
        {"role": "user", "content": EXAMPLES[1].input},
        {"role": "assistant", "content": EXAMPLES[1].output},
        {"role": "user", "content": EXAMPLES[0].input},
        {"role": "assistant", "content": EXAMPLES[0].output},
    ]
    assert few_shot_messages([]) == []


def test_with_few_shot_inserts_before_final_user_message() -> None:
    convo = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "reset password?"},
    ]
    out = with_few_shot(convo, [(EXAMPLES[0], 0.9)])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert out[3]["content"] == EXAMPLES[0].input and out[-1] == convo[-1]
    assert len(convo) == 4  # input untouched
