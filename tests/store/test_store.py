"""The Store protocol, on both backends (see conftest.py)."""

from __future__ import annotations

import time

import pytest

from gateway.store import codec, migrations, open_store
from gateway.store.dialect import Conn, Dialect
from gateway.store.records import ArtifactRecord, Attempt, CallRecord, Escalation, Transition
from gateway.store.sql import SqlStore
from tests.store.factories import SYSTEM_5K, T0, make_call, make_feedback


async def scalar(store: SqlStore, sql: str) -> int:
    async with store._read() as conn:
        rows = await conn.fetch(sql)
    return int(rows[0][0] or 0)


# -- calls -------------------------------------------------------------------------------------


async def test_call_round_trip_with_every_field(store: SqlStore) -> None:
    call = CallRecord(
        id="chatcmpl-full",
        route="support-bot",
        variant="large",
        model="large",
        endpoint="chat",
        created_at=T0 + 0.123456,
        key_id="team-a",
        user="alice",
        session_id="sess-1",
        template_version="t3",
        index_version="i2",
        policy_version="p5",
        policy_reason="learned: p(strong wins)=0.31",
        choice_probability=0.31,
        request={"messages": [{"role": "user", "content": "héllo ✓"}], "n": 1, "tools": [{"x": None}]},
        response={"id": "chatcmpl-full", "choices": [], "usage": {"total_tokens": 3}},
        status=502,
        error="all attempts failed",
        prompt_tokens=2,
        completion_tokens=1,
        cost_usd=1.5e-6,
        latency_ms=45.25,
        ttft_ms=12.5,
        stream=True,
        attempts=[
            Attempt("small", "openai", status=None, error="timeout", latency_ms=8000.0, started_at=T0),
            Attempt("large", "vllm", status=502, error="bad gateway", latency_ms=3.0, started_at=T0 + 8),
        ],
        retrieved_ids=["ex-1", "ex-7"],
        escalation=Escalation("small", "small", cost_usd=2.5e-7, same_answer=False),
    )
    await store.insert_calls([call])
    assert await store.get_call("chatcmpl-full") == call
    assert await store.get_call("nope") is None
    assert await store.count_attempts() == 2


async def test_long_contents_are_stored_as_blobs_and_restored(store: SqlStore) -> None:
    long_part = "retrieved example: " + "x" * 400
    call = make_call(1, system=SYSTEM_5K)
    call.request["messages"].append(
        {"role": "user", "content": [{"type": "text", "text": long_part}, {"type": "text", "text": "short"}]}
    )
    await store.insert_calls([call])
    async with store._read() as conn:
        raw = (await conn.fetch("SELECT request FROM calls WHERE id = ?", call.id))[0][0]
    assert SYSTEM_5K not in raw and long_part not in raw
    assert codec.blob_refs(codec.loads(raw)) == {codec.blob_hash(SYSTEM_5K), codec.blob_hash(long_part)}
    assert await scalar(store, "SELECT COUNT(*) FROM blobs") == 2
    got = await store.get_call(call.id)
    assert got is not None and got.request == call.request
    assert (await store.list_calls())[0].request == call.request


async def test_thousand_calls_sharing_a_5k_prompt_store_it_once(store: SqlStore) -> None:
    calls = [make_call(i, system=SYSTEM_5K) for i in range(1000)]
    for start in range(0, 1000, 250):
        await store.insert_calls(calls[start : start + 250])
    assert await scalar(store, "SELECT COUNT(*) FROM blobs") == 1
    assert await scalar(store, "SELECT COUNT(*) FROM call_blobs") == 1000
    # Without dedup the request column alone would hold 1000 x 5 KB.
    assert await scalar(store, "SELECT SUM(LENGTH(request)) FROM calls") < 300_000
    listed = await store.list_calls(limit=2000)
    assert len(listed) == 1000
    assert all(c.request["messages"][0]["content"] == SYSTEM_5K for c in listed)


async def test_no_log_calls_keep_metadata_only(store: SqlStore) -> None:
    await store.insert_calls([make_call(1, system=SYSTEM_5K, no_log=True)])
    got = await store.get_call("chatcmpl-000001")
    assert got is not None and got.no_log
    assert got.request is None and got.response is None
    assert got.prompt_tokens == 120 and len(got.attempts) == 2
    assert await scalar(store, "SELECT COUNT(*) FROM blobs") == 0


async def test_insert_calls_is_idempotent_on_id(store: SqlStore) -> None:
    calls = [make_call(i) for i in range(5)]
    await store.insert_calls(calls)
    await store.insert_calls([*calls[:3], make_call(5), make_call(5)])  # repeats, also within a batch
    assert await store.count_calls() == 6
    assert await store.count_attempts() == 12
    await store.insert_calls([])
    assert await store.count_calls() == 6


async def test_list_calls_filters_and_order(store: SqlStore) -> None:
    calls = [
        make_call(i, route="a" if i % 2 else "b", user=f"u{i % 3}", created_at=T0 + (7 * i) % 10)
        for i in range(10)
    ]
    await store.insert_calls(calls)
    listed = await store.list_calls()
    assert [c.created_at for c in listed] == sorted(c.created_at for c in calls)
    assert {c.route for c in await store.list_calls(route="a")} == {"a"}
    assert len(await store.list_calls(route="a")) == 5
    window = await store.list_calls(since=T0 + 2, until=T0 + 5)
    assert [c.created_at for c in window] == [T0 + 2, T0 + 3, T0 + 4]
    assert {c.user for c in await store.list_calls(user="u1")} == {"u1"}
    assert len(await store.list_calls(user="u1")) == 3
    page = await store.list_calls(limit=3, offset=4)
    assert [c.id for c in page] == [c.id for c in listed[4:7]]
    assert all(len(c.attempts) == 2 for c in page)
    assert await store.list_calls(route="a", user="u0", since=T0 + 5) == [
        c for c in listed if c.route == "a" and c.user == "u0" and c.created_at >= T0 + 5
    ]
    assert await store.count_calls() == 10
    assert await store.count_calls(route="b") == 5
    assert await store.count_calls(route="zzz") == 0


# -- feedback ----------------------------------------------------------------------------------


async def test_feedback_round_trip_idempotent_and_filters(store: SqlStore) -> None:
    await store.insert_calls([make_call(1, route="a"), make_call(2, route="b")])
    fb_full = make_feedback(
        "chatcmpl-000001",
        0,
        rating=-1,
        score=0.25,
        correction="better answer",
        correction_diff="-answer 1\n+better answer",
        signal="edited",
        comment="meh",
        user="alice",
        source="user",
    )
    inferred = make_feedback(
        "chatcmpl-000002", 1, signal="regenerated", source="inferred", related_call_id="chatcmpl-000003"
    )
    early_source_user = make_feedback("chatcmpl-000002", 2, created_at=T0 + 5)
    orphan = make_feedback("chatcmpl-not-yet", 3)  # feedback may land before its call
    for fb in (fb_full, inferred, early_source_user, orphan, fb_full):
        await store.insert_feedback(fb)
    assert await store.count_feedback() == 4
    assert await store.list_feedback(call_ids=["chatcmpl-000001"]) == [fb_full]
    assert await store.list_feedback(route="b") == [early_source_user, inferred]
    assert await store.list_feedback(route="b", source="inferred") == [inferred]
    assert await store.list_feedback(since=T0 + 10_000) == [fb_full, inferred, orphan]
    assert await store.list_feedback(call_ids=["chatcmpl-not-yet", "chatcmpl-000002"], since=T0 + 10_000) == [
        inferred,
        orphan,
    ]
    assert await store.list_feedback(call_ids=[]) == []
    assert await store.count_feedback(route="b") == 2
    assert await store.count_feedback(route="b", since=T0 + 10_000) == 1
    assert await store.count_feedback(since=T0 + 10_002) == 1


# -- artifacts ---------------------------------------------------------------------------------


def artifact(version: str, created_at: float, **kw: object) -> ArtifactRecord:
    return ArtifactRecord(
        route="support-bot",
        kind="template",
        version=version,
        body={"system": f"template {version}"},
        created_at=created_at,
        **kw,  # type: ignore[arg-type]
    )


async def test_artifacts_save_get_list_and_replace(store: SqlStore) -> None:
    t2 = artifact(
        "t2",
        T0 + 2,
        parent="t1",
        produced_by="prompt-learner k=4",
        data_window=(T0 - 100, T0),
        evidence_call_ids=["c1", "c2"],
        evidence_feedback_ids=["f1"],
        evaluation={"win_rate": 0.61, "n": 200},
        note="added an example about refunds",
    )
    t1 = artifact("t1", T0 + 1)
    await store.save_artifact(t2)
    await store.save_artifact(t1)
    await store.save_artifact(ArtifactRecord(route="support-bot", kind="index", version="t1", body=[1, 2]))
    assert await store.get_artifact("support-bot", "template", "t2") == t2
    assert await store.get_artifact("support-bot", "template", "t9") is None
    assert await store.list_artifacts("support-bot", "template") == [t1, t2]
    t2.evaluation = {"win_rate": 0.7}
    await store.save_artifact(t2)
    got = await store.get_artifact("support-bot", "template", "t2")
    assert got is not None and got.evaluation == {"win_rate": 0.7}
    assert len(await store.list_artifacts("support-bot", "template")) == 2


async def test_index_examples_are_stored_once_for_all_versions_and_forgotten_everywhere(store: SqlStore) -> None:
    def index(version: str, ids: list[str]) -> ArtifactRecord:
        examples = [{"id": f"{i}#fb", "question": f"question {i}", "answer": f"answer {i}"} for i in ids]
        return ArtifactRecord(route="support-bot", kind="index", version=version, created_at=T0,
                              body={"embedder": "hashing", "count": len(ids), "examples": examples})

    i1, i2 = index("i1", ["a", "b"]), index("i2", ["a", "b", "c"])
    await store.save_artifact(i1)
    assert await store.create_artifact(i2, Transition("support-bot", "index", "i2", None, "candidate", "grown"))
    assert await store.get_artifact("support-bot", "index", "i2") == i2  # the body as it was saved
    assert await store.list_artifacts("support-bot", "index") == [i1, i2]

    async def count(sql: str) -> int:
        async with store._read() as conn:
            return int((await conn.fetch(sql))[0][0])

    assert await count("SELECT COUNT(*) FROM index_examples") == 3  # a, b, c once each
    async with store._read() as conn:
        stored = "".join(r[0] for r in await conn.fetch("SELECT body FROM artifacts"))
    assert "question" not in stored  # the versions keep addresses, not examples
    assert await store.forget_examples("support-bot", ["b#fb"]) == 1
    got = await store.get_artifact("support-bot", "index", "i2")
    assert got is not None and [e["id"] for e in got.body["examples"]] == ["a#fb", "c#fb"]
    assert got.body["count"] == 2
    await store.save_artifact(index("i3", []))  # a version left with no examples (all forgotten)
    empty = await store.get_artifact("support-bot", "index", "i3")
    assert empty is not None and empty.body["examples"] == []


async def test_transition_updates_state_and_appends_history(store: SqlStore) -> None:
    await store.save_artifact(artifact("t2", T0))
    await store.save_artifact(ArtifactRecord(route="support-bot", kind="policy", version="p1", body={}))
    steps = [
        Transition("support-bot", "template", "t2", "candidate", "canary", "eval +4%", at=T0 + 1),
        Transition("support-bot", "template", "t2", "canary", "promoted", "canary won", at=T0 + 2),
        Transition("support-bot", "policy", "p1", None, "canary", "manual", at=T0 + 3),
    ]
    for t in steps:
        await store.transition(t)
    got = await store.get_artifact("support-bot", "template", "t2")
    assert got is not None and got.state == "promoted"
    assert await store.list_transitions("support-bot") == steps
    assert await store.list_transitions("support-bot", "template") == steps[:2]
    assert await store.list_transitions("other") == []


async def test_transition_refuses_unknown_or_stale_and_changes_nothing(store: SqlStore) -> None:
    await store.save_artifact(artifact("t2", T0))
    with pytest.raises(KeyError):
        await store.transition(Transition("support-bot", "template", "t9", None, "canary", "x"))
    with pytest.raises(ValueError, match="candidate"):
        await store.transition(Transition("support-bot", "template", "t2", "canary", "promoted", "x"))
    got = await store.get_artifact("support-bot", "template", "t2")
    assert got is not None and got.state == "candidate"
    assert await store.list_transitions("support-bot") == []


# -- deletion ----------------------------------------------------------------------------------


async def test_forget_user_deletes_calls_attempts_feedback_and_private_blobs(store: SqlStore) -> None:
    alice_prompt = "alice's pasted contract: " + "z" * 500
    alice = [make_call(i, user="alice", system=alice_prompt if i == 0 else SYSTEM_5K) for i in range(3)]
    bob = [make_call(10 + i, user="bob", system=SYSTEM_5K) for i in range(2)]
    await store.insert_calls(alice + bob)
    await store.insert_feedback(make_feedback(alice[0].id, 0, user="bob"))  # ON alice's call
    await store.insert_feedback(make_feedback(alice[1].id, 1, user="bob"))
    await store.insert_feedback(make_feedback(bob[0].id, 2, user="alice"))  # BY alice
    await store.insert_feedback(make_feedback(bob[0].id, 3, user="bob"))  # stays
    assert await store.forget_user("alice") == (3, 3)
    assert await store.count_calls() == 2
    assert await store.count_attempts() == 4
    assert [f.id for f in await store.list_feedback()] == [f"fb-{bob[0].id}-3"]
    async with store._read() as conn:
        hashes = {r[0] for r in await conn.fetch("SELECT hash FROM blobs")}
    assert hashes == {codec.blob_hash(SYSTEM_5K)}  # alice's private text is gone, the shared one kept
    bob_call = await store.get_call(bob[0].id)
    assert bob_call is not None and bob_call.request["messages"][0]["content"] == SYSTEM_5K
    assert await store.forget_user("alice") == (0, 0)


async def test_a_forgotten_users_late_calls_and_feedback_are_dropped_on_arrival(store: SqlStore) -> None:
    # Calls still queued in a running gateway or spilled when `flywheel forget` ran arrive later.
    assert await store.forget_user("alice") == (0, 0)
    now = time.time()
    late = make_call(1, user="alice", system="alice's pasted contract: " + "z" * 500)
    again = make_call(2, user="alice", created_at=now + 60, system=SYSTEM_5K)  # came back after the forget
    bob = make_call(3, user="bob", system=SYSTEM_5K)
    await store.insert_calls([late, again, bob])
    assert {c.id for c in await store.list_calls()} == {again.id, bob.id}
    assert await store.count_attempts() == 4
    assert await scalar(store, "SELECT COUNT(*) FROM blobs") == 1  # alice's private text never landed
    await store.insert_feedback(make_feedback(bob.id, 1, user="alice"))  # given before the forget
    await store.insert_feedback(make_feedback(bob.id, 2, user="alice", created_at=now + 61))
    assert [f.id for f in await store.list_feedback()] == [f"fb-{bob.id}-2"]
    async with store._read() as conn:
        tombstones = await conn.fetch("SELECT user_hash FROM forgotten_users")
    assert [r[0] for r in tombstones] == [codec.user_hash("alice")] != ["alice"]  # not the id itself
    await store.delete_older_than(now - 10)
    assert await scalar(store, "SELECT COUNT(*) FROM forgotten_users") == 1  # younger than the cut-off: kept
    await store.delete_older_than(now + 10)
    assert await scalar(store, "SELECT COUNT(*) FROM forgotten_users") == 0


async def test_delete_older_than_in_batches(store: SqlStore) -> None:
    old = [make_call(i, system=SYSTEM_5K if i % 2 else "x" * 300 + str(i)) for i in range(1200)]
    new = [make_call(5000 + i, created_at=T0 + 5000 + i, system=SYSTEM_5K) for i in range(10)]
    await store.insert_calls(old + new)
    for i in range(0, 1200, 100):
        await store.insert_feedback(make_feedback(old[i].id, i))
    await store.insert_feedback(make_feedback(new[0].id, 1))
    assert await store.delete_older_than(T0 + 1200, batch=100) == 1200
    assert await store.count_calls() == 10
    assert await store.count_attempts() == 20
    assert await store.count_feedback() == 1
    assert await scalar(store, "SELECT COUNT(*) FROM blobs") == 1  # 600 unique old prompts collected
    assert await store.delete_older_than(T0 + 1200) == 0
    assert await store.delete_older_than(T0 + 10**6) == 10
    assert await scalar(store, "SELECT COUNT(*) FROM blobs") == 0


# -- migrations --------------------------------------------------------------------------------


async def test_migrations_recorded_and_idempotent(store: SqlStore, store_url: str) -> None:
    names = [name for name, _ in migrations.MIGRATIONS]
    async with store._read() as conn:
        rows = await conn.fetch("SELECT name FROM _migrations ORDER BY name")
    assert [r[0] for r in rows] == sorted(names)  # ORDER BY name; the list is in apply order
    await store.insert_calls([make_call(1)])
    await store.migrate()
    other = open_store(store_url)
    await other.migrate()
    await other.close()
    assert await scalar(store, "SELECT COUNT(*) FROM _migrations") == len(names)
    assert await store.count_calls() == 1


async def test_migration_functions_run_once_in_order(store: SqlStore) -> None:
    ran: list[str] = []

    async def add_column(conn: Conn, dialect: Dialect) -> None:
        ran.append(dialect.name)
        await conn.execute("ALTER TABLE calls ADD COLUMN extra TEXT")

    extra = (*migrations.MIGRATIONS, ("900_extra_column", add_column))
    async with store._write() as conn:
        assert await migrations.apply(conn, store.dialect, extra) == ["900_extra_column"]
    async with store._write() as conn:
        assert await migrations.apply(conn, store.dialect, extra) == []
    assert ran == [store.dialect.name]
    await store.insert_calls([make_call(1)])  # explicit column lists keep working
    assert await store.count_calls() == 1
