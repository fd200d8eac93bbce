"""Artifact versions and their lifecycle over a real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.settings import LearnerSettings
from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry, Manifest, TransitionRefused, kind_of, version_number
from gateway.store.base import Store
from learners.rollout import Rollout

M = Manifest(produced_by="test", evidence_call_ids=("c1",), note="because")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/a.db")
    await s.migrate()
    yield s
    await s.close()


async def test_versions_are_numbered_per_route_and_kind(store: Store) -> None:
    reg = ArtifactRegistry(store)
    assert await reg.next_version("bot", "template") == "t1"
    await reg.save_candidate("bot", "template", {"source": "x"}, M, version="t0")
    assert [await reg.next_version("bot", k) for k in ("template", "index", "policy")] == ["t1", "i1", "p1"]
    rec = await reg.save_candidate("bot", "template", {"source": "y"}, M)
    assert rec.version == "t1" and rec.state == "candidate" and rec.note == "because"
    assert await reg.next_version("other", "template") == "t1"
    assert (version_number("t12"), kind_of("i3"), kind_of("p1")) == (12, "index", "policy")
    with pytest.raises(ValueError):
        kind_of("x9")


async def test_lifecycle_and_current(store: Store) -> None:
    reg = ArtifactRegistry(store)
    for v in ("t1", "t2", "t3"):
        await reg.save_candidate("bot", "template", {"source": v}, M, version=v)
    await reg.move("bot", "template", "t1", "promoted", "first")
    await reg.move("bot", "template", "t2", "canary", "try")
    states = await reg.states("bot", "template")
    assert (states.current, states.canary) == ("t1", "t2")
    await reg.move("bot", "template", "t2", "promoted", "online ok")
    assert (await reg.current("bot", "template")).version == "t2"  # type: ignore[union-attr]
    await reg.move("bot", "template", "t2", "rolled_back", "oops")
    assert (await reg.states("bot", "template")).current == "t1"  # the one before is current again
    await reg.move("bot", "template", "t3", "rejected", "worse")
    with pytest.raises(TransitionRefused):
        await reg.move("bot", "template", "t3", "promoted", "no")
    with pytest.raises(TransitionRefused):
        await reg.move("bot", "template", "t2", "promoted", "no way back")
    history = [(t.version, t.from_state, t.to_state, t.reason) for t in await reg.history("bot")]
    assert history[:3] == [("t1", None, "candidate", "because"), ("t2", None, "candidate", "because"),
                           ("t3", None, "candidate", "because")]
    assert ("t2", "promoted", "rolled_back", "oops") in history
    assert ("t3", "candidate", "rejected", "worse") in history


async def test_an_existing_version_is_never_overwritten(store: Store) -> None:
    reg = ArtifactRegistry(store)
    await reg.save_candidate("bot", "index", {"examples": []}, M, version="i1")
    with pytest.raises(TransitionRefused, match="already exists"):
        await reg.save_candidate("bot", "index", {"examples": ["other"]}, M, version="i1")


async def test_provenance_is_required(store: Store) -> None:
    with pytest.raises(TransitionRefused, match="provenance"):
        await ArtifactRegistry(store).save_candidate("bot", "index", {}, Manifest(produced_by=""))


async def test_annotate_keeps_the_state(store: Store) -> None:
    reg = ArtifactRegistry(store)
    await reg.save_candidate("bot", "index", {"examples": []}, M, version="i1", evaluation={"offline": 1})
    await reg.move("bot", "index", "i1", "canary", "go")
    await reg.annotate("bot", "index", "i1", online={"n": 3})
    rec = await reg.get("bot", "index", "i1")
    assert rec is not None and rec.state == "canary" and rec.evaluation == {"offline": 1, "online": {"n": 3}}


async def test_rollback_defaults_to_the_canary_then_the_latest_promotion(store: Store) -> None:
    reg = ArtifactRegistry(store)
    ro = Rollout(reg, lambda: LearnerSettings(canary_share=0.2))
    for v in ("t0", "t1"):
        await reg.save_candidate("bot", "template", {"source": v}, M, version=v)
    await reg.save_candidate("bot", "index", {"examples": []}, M, version="i1")
    await reg.move("bot", "template", "t0", "promoted", "seed")
    assert (await ro.begin("bot", "template", "t1", "offline ok")).action == "canary"
    await ro.begin("bot", "index", "i1", "offline ok")
    await reg.move("bot", "index", "i1", "promoted", "online ok")
    d = await ro.rollback("bot")
    assert (d.kind, d.version) == ("template", "t1")  # the running canary first
    d = await ro.rollback("bot")
    assert (d.kind, d.version) == ("index", "i1")  # then the latest promotion
    with pytest.raises(TransitionRefused):
        await ro.rollback("bot", "t1")  # already rolled back
    immediate = Rollout(reg, lambda: LearnerSettings(canary_share=0.0))
    await reg.save_candidate("bot", "template", {"source": "t2"}, M, version="t2")
    assert (await immediate.begin("bot", "template", "t2", "ok")).action == "promoted"


async def test_an_index_version_that_ends_drops_its_vectors_and_keeps_its_examples(store: Store) -> None:
    from gateway.store.forget import filter_body
    from retrieval.embeddings import HashingEmbedder
    from retrieval.examples import Example, ExampleIndex

    emb = HashingEmbedder()

    def body(*ids: str) -> dict[str, object]:
        return ExampleIndex.build([Example(i, f"question {i}", f"answer {i}", f"call-{i}", "correction", 0.0)
                                   for i in ids], emb).to_body()

    reg = ArtifactRegistry(store)
    for version, ids in (("i1", ("a",)), ("i2", ("a", "b")), ("i3", ("a", "c")), ("i4", ("a", "d"))):
        await reg.save_candidate("bot", "index", body(*ids), M, version=version)
    await reg.move("bot", "index", "i1", "promoted", "seed")
    await reg.move("bot", "index", "i2", "canary", "try")
    await reg.move("bot", "index", "i2", "rejected", "superseded by i3")
    await reg.move("bot", "index", "i3", "rejected", "refused offline")
    await reg.move("bot", "index", "i4", "promoted", "better")
    await reg.move("bot", "index", "i4", "rolled_back", "worse online")

    async def stored(version: str) -> dict[str, object]:
        rec = await reg.get("bot", "index", version)
        assert rec is not None and isinstance(rec.body, dict)
        return rec.body

    assert "index_b64" in await stored("i1")  # current serves: its vectors stay
    for version in ("i2", "i3", "i4"):  # ended: examples and settings stay for diffs, blame and audits
        slim = await stored(version)
        assert "index_b64" not in slim and len(slim["examples"]) == 2  # type: ignore[arg-type]
    assert (await reg.states("bot", "index")).versions["i4"].state == "rolled_back"
    # forgetting a user still reaches an ended version's examples
    kept, removed = filter_body("index", await stored("i2"), {"call-b"}, set())
    assert removed == 1 and isinstance(kept, dict) and [e["id"] for e in kept["examples"]] == ["a"]


async def test_a_promoted_index_two_promotions_behind_drops_its_vectors_and_still_serves_on_rollback(
        store: Store) -> None:
    from retrieval.embeddings import HashingEmbedder
    from retrieval.examples import Example, ExampleIndex

    emb = HashingEmbedder()
    reg = ArtifactRegistry(store)
    for n in range(1, 5):
        examples = [Example(f"e{i}", f"question {i}", f"answer {i}", f"call-{i}", "correction", 0.0) for i in range(n)]
        await reg.save_candidate("bot", "index", ExampleIndex.build(examples, emb).to_body(), M, version=f"i{n}")
        await reg.move("bot", "index", f"i{n}", "promoted", "grown")

    async def body(version: str) -> dict[str, object]:
        rec = await reg.get("bot", "index", version)
        assert rec is not None and isinstance(rec.body, dict)
        return rec.body

    # current (i4) and the version its rollback restores (i3) keep their vectors; the older ones do not
    assert ["index_b64" in await body(f"i{n}") for n in range(1, 5)] == [False, False, True, True]
    assert (await reg.states("bot", "index")).versions["i2"].state == "promoted"  # still a rollback target
    heads = await reg.list_versions("bot", "index", bodies=False)  # what listings and diffs scan
    assert [(h.version, h.body) for h in heads] == [(f"i{n}", None) for n in range(1, 5)]
    assert await reg.next_version("bot", "index") == "i5"
    await reg.move("bot", "index", "i4", "rolled_back", "worse")
    await reg.move("bot", "index", "i3", "rolled_back", "worse too")
    states = await reg.states("bot", "index")
    assert states.current == "i2"
    rebuilt = ExampleIndex.from_body(await body("i2"), emb)  # serving rebuilds its vectors
    assert [e.id for e in rebuilt.examples] == ["e0", "e1"]
    assert rebuilt.query(emb.embed(["question 1"])[0], k=1)[0][0].id == "e1"
