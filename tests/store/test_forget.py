"""Forgetting a user removes their examples from learned artifacts, not only their rows: a
promoted retrieval index and a template's demonstrations stop holding (and serving) them."""

from __future__ import annotations

from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.forget import forget_user
from gateway.store.sql import SqlStore
from retrieval.embeddings import HashingEmbedder
from retrieval.examples import Example, ExampleIndex
from tests.store.factories import make_call, make_feedback

ROUTE = "support-bot"


def _example(call_id: str, fb_id: str, text: str) -> Example:
    return Example(f"{call_id}#{fb_id}", f"question {text}", f"answer {text}", call_id, "correction", 1.0)


async def test_forget_removes_the_users_examples_from_a_promoted_index(store: SqlStore) -> None:
    await store.insert_calls([make_call(1, user="alice"), make_call(2, user="bob"), make_call(3, user="bob")])
    # alice's own call, and a correction alice gave on bob's call 3
    await store.insert_feedback(make_feedback("chatcmpl-000003", id="fb-alice", user="alice"))
    examples = [_example("chatcmpl-000001", "fb-1", "alice asked"),
                _example("chatcmpl-000002", "fb-2", "bob asked"),
                _example("chatcmpl-000003", "fb-alice", "alice corrected")]
    embedder = HashingEmbedder()
    body = ExampleIndex.build(examples, embedder).to_body()
    registry = ArtifactRegistry(store)
    manifest = Manifest(produced_by="test", evidence_call_ids=("chatcmpl-000001", "chatcmpl-000002"))
    index = await registry.save_candidate(ROUTE, "index", body, manifest)
    await registry.move(ROUTE, "index", index.version, "promoted", "test")
    template = {"source": "Be brief.", "instructions": [], "demonstrations": [
        {"input": "question alice asked", "output": "answer", "source_id": "chatcmpl-000001#fb-1"},
        {"input": "question bob asked", "output": "answer", "source_id": "chatcmpl-000002#fb-2"}]}
    tpl = await registry.save_candidate(ROUTE, "template", template, Manifest(produced_by="test"))
    await registry.move(ROUTE, "template", tpl.version, "promoted", "test")

    report = await forget_user(store, ["alice"], [ROUTE])

    assert (report.calls, report.examples) == (1, 3)
    current = await registry.current(ROUTE, "index")
    assert current is not None and current.version != index.version  # a filtered successor is live
    served = ExampleIndex.from_body(current.body, embedder)
    assert [e.id for e in served.examples] == ["chatcmpl-000002#fb-2"]
    hits = served.query(embedder.embed(["question alice corrected"])[0], k=3)
    assert all("alice" not in e.input for e, _ in hits)
    # no copy of alice's examples is left in any version, and the log says why
    for version in await registry.list_versions(ROUTE, "index"):
        assert all("alice" not in e["input"] for e in version.body["examples"])
        assert "chatcmpl-000001" not in version.evidence_call_ids
    async with store._read() as conn:  # nor in the rows an index's examples are stored in once
        stored = [r[0] for r in await conn.fetch("SELECT body FROM index_examples")]
    assert len(stored) == 1 and "alice" not in stored[0]
    old = (await registry.states(ROUTE, "index")).versions[index.version]
    assert old.state == "rolled_back" and "forget" in old.reason
    live_tpl = await registry.current(ROUTE, "template")
    assert live_tpl is not None
    assert [d["source_id"] for d in live_tpl.body["demonstrations"]] == ["chatcmpl-000002#fb-2"]
    assert any("forget" in t.reason for t in await registry.history(ROUTE, "template"))
