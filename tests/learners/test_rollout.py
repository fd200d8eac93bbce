# ruff: noqa: F811 - the `store` fixture is imported (both backends) and named by the tests
"""The one rollout mechanism, on both store backends: a sequential decision that promotes a clearly
better canary and rolls back a clearly worse one within the evidence bound, grows the canary's
share as evidence mounts (recorded where the request path reads it), and queues a newer candidate
behind a running canary instead of stalling learning."""

from __future__ import annotations

import itertools

from gateway.config.settings import LearnerSettings
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.records import ArtifactKind, CallRecord, FeedbackRecord
from gateway.store.sql import SqlStore
from learners.rollout import Rollout
from learners.sequential import ArmEvidence, Rule, at_canary_mix, decide
from tests.store.conftest import pg_database, store, store_url  # noqa: F401 - fixtures over both backends

M = Manifest(produced_by="test", note="because")
CFG = LearnerSettings(canary_share=0.1, canary_min_feedback=5, canary_max_feedback=40)
FIELD = {"template": "template_version", "index": "index_version", "policy": "policy_version"}
_ids = itertools.count()


async def _serve(store: SqlStore, kind: ArtifactKind, version: str | None, good: bool, at: float,
                 variant: str = "m") -> None:
    """One chat call served by `version` of `kind` (answered by `variant`), rated good or bad."""
    cid = f"c{next(_ids):06d}"
    await store.insert_calls([CallRecord(id=cid, route="bot", variant=variant, model=variant, created_at=at,
                                         cost_usd=0.001,
                                         **{FIELD[kind]: version})])
    await store.insert_feedback(FeedbackRecord(cid, rating=1 if good else -1, created_at=at + 0.1))


async def _canary(reg: ArtifactRegistry, kind: ArtifactKind, delta: float) -> tuple[str, str, float]:
    """A promoted current version and a canary whose offline evaluation gained `delta`."""
    cur, can = (f"{kind[0]}1", f"{kind[0]}2")
    evaluation = {"offline": {"delta": delta}, "verdict": {"quality_delta": delta}}
    await reg.save_candidate("bot", kind, {"v": 1}, M, version=cur)
    await reg.move("bot", kind, cur, "promoted", "seed")
    await reg.save_candidate("bot", kind, {"v": 2}, M, version=can, evaluation=evaluation)
    assert (await Rollout(reg, lambda: CFG).begin("bot", kind, can, "offline ok")).action == "canary"
    since = (await reg.states("bot", kind)).versions[can].since
    return cur, can, since


async def test_a_clearly_better_canary_is_promoted_within_the_evidence_bound(store: SqlStore) -> None:
    for kind in ("template", "index", "policy"):  # the same mechanism for every kind
        reg = ArtifactRegistry(store)
        cur, can, t = await _canary(reg, kind, 0.2)
        rollout = Rollout(reg, lambda: CFG)
        for i in range(30):  # current fails 4 calls in 5
            await _serve(store, kind, cur, i % 5 == 0, t + 1 + i)
        decided_at = None
        for n in range(1, CFG.canary_max_feedback + 1):
            await _serve(store, kind, can, True, t + 100 + n)
            decisions = await rollout.check("bot", (kind,), "any")
            if decisions and decisions[0].action == "promoted":
                decided_at = n
                break
            assert decisions[0].action == "waiting"
        assert decided_at is not None and CFG.canary_min_feedback <= decided_at <= 10, (kind, decided_at)
        assert (await reg.states("bot", kind)).current == can
        rec = await reg.get("bot", kind, can)
        assert rec is not None and rec.evaluation["sequential"]["p_better"] > 0.95
        log = [t.reason for t in await reg.history("bot", kind) if t.version == can and t.to_state == "promoted"]
        assert "P(canary better)" in log[0] and "online: canary" in log[0]


async def test_a_clearly_worse_canary_is_rolled_back_as_fast(store: SqlStore) -> None:
    reg = ArtifactRegistry(store)
    cur, can, t = await _canary(reg, "index", 0.1)  # offline said better: the prior is only weak
    rollout = Rollout(reg, lambda: CFG)
    for i in range(30):
        await _serve(store, "index", cur, i % 10 != 0, t + 1 + i)  # current: 90 % good
    for n in range(1, 11):
        await _serve(store, "index", can, False, t + 100 + n)
        [d] = await rollout.check("bot", ("index",), "any")
        if d.action != "waiting":
            break
    assert d.action == "rolled_back" and n <= 8, (n, d.reason)
    assert "worse with confidence" in d.reason
    assert (await reg.states("bot", "index")).current == cur


async def test_the_share_grows_with_evidence_and_is_recorded_for_the_request_path(store: SqlStore) -> None:
    reg = ArtifactRegistry(store)
    cur, can, t = await _canary(reg, "template", 0.0)
    cfg = CFG.model_copy(update={"canary_min_feedback": 30, "canary_max_feedback": 60})
    rollout = Rollout(reg, lambda: cfg)
    for i in range(20):
        await _serve(store, "template", cur, i % 2 == 0, t + 1 + i)  # current: 50 %
    for n in range(8):
        await _serve(store, "template", can, True, t + 100 + n)
    [d] = await rollout.check("bot", ("template",), "any")
    assert d.action == "waiting" and d.reason.startswith("share 4")
    state = (await reg.states("bot", "template")).versions[can]
    assert state.state == "canary" and 0.4 <= (state.share or 0) <= cfg.canary_max_share
    assert state.since < t + 100  # a share change keeps the canary's start (its evidence window)


async def test_on_a_routed_route_an_artifact_is_compared_at_the_canarys_model_mix(store: SqlStore) -> None:
    # current's calls mostly went to the strong model (always right), the canary's to the cheap one,
    # which it makes right: as served the two tie; like for like the canary is far better
    for kind in ("index", "policy"):
        reg = ArtifactRegistry(store)
        cur, can, t = await _canary(reg, kind, 0.0)
        for i in range(30):
            cheap = i % 3 == 0
            await _serve(store, kind, cur, not cheap or i % 9 == 0, t + 1 + i, "cheap" if cheap else "strong")
        for n in range(8):
            await _serve(store, kind, can, n != 3, t + 100 + n, "cheap")
        fig = await Rollout(reg, lambda: CFG).compare("bot", kind, await reg.states("bot", kind))
        assert fig is not None and fig.canary_mean == 7 / 8
        if kind == "index":
            # cheap's 10 rated calls on current (4 good), shrunk by 2 calls toward its overall 24/30
            assert fig.current_raw_mean == 24 / 30 and abs(fig.current_mean - (4 + 2 * 0.8) / 12) < 1e-9
            assert abs(fig.current_sum - 30 * fig.current_mean) < 1e-9
            [d] = await Rollout(reg, lambda: CFG).check("bot", (kind,), "any")
            assert d.action == "promoted" and "at the canary's model mix (0.80 as served)" in d.reason
        else:  # a policy chooses the mix: that is what it is judged on
            assert fig.current_raw_mean is None and fig.current_mean == fig.current_sum / fig.current_n


def test_current_at_the_canary_mix_needs_two_strata() -> None:
    assert at_canary_mix([("m", 1.0)], [("m", 0.0), ("m", 1.0)]) is None
    assert at_canary_mix([], [("a", 1.0), ("b", 0.0)]) is None
    # a stratum current never rated falls back to its overall mean
    assert at_canary_mix([("c", 1.0)], [("a", 1.0), ("b", 0.0)]) == 0.5


def test_without_evidence_the_share_stays_at_the_floor_and_a_worse_canary_gets_no_more() -> None:
    rule = Rule.of(CFG)
    assert decide(ArmEvidence(0, 0), ArmEvidence(0, 0), rule).share == CFG.canary_share
    worse = decide(ArmEvidence(4, 1), ArmEvidence(40, 30), rule)
    assert worse.verdict == "continue" and worse.share == CFG.canary_share
    # the offline delta is a prior: with no online evidence yet, a big offline gain already grows the share
    assert decide(ArmEvidence(0, 0), ArmEvidence(40, 2), rule, 0.3).share > CFG.canary_share


async def test_a_newer_candidate_queues_behind_the_canary_and_starts_when_it_is_decided(store: SqlStore) -> None:
    reg = ArtifactRegistry(store)
    rollout = Rollout(reg, lambda: CFG)
    cur, can, t = await _canary(reg, "index", 0.2)
    for v in ("i3", "i4"):
        await reg.save_candidate("bot", "index", {"v": v}, M, version=v, evaluation={"added": [f"x{v}"]})
        d = await rollout.begin("bot", "index", v, "offline +0.1")
        assert d.action == "queued" and "queued behind canary i2" in d.reason
    assert (await reg.states("bot", "index")).canary == can
    for n in range(6):
        await _serve(store, "index", can, True, t + 10 + n)
        await _serve(store, "index", cur, False, t + 10.5 + n)
    decisions = await rollout.check("bot", ("index",), "any")
    assert [(d.version, d.action) for d in decisions] == [("i2", "promoted"), ("i3", "rejected"), ("i4", "canary")]
    assert "superseded by i4" in decisions[1].reason
    # an admin rollback of the canary starts nothing that carries the rolled-back examples
    await reg.save_candidate("bot", "index", {"v": 5}, M, version="i5", evaluation={"added": ["xi4"]})
    await rollout.begin("bot", "index", "i5", "offline ok")
    await reg.annotate("bot", "index", "i4", added=["xi4"])
    await rollout.rollback("bot", "i4")
    states = await reg.states("bot", "index")
    assert states.canary is None and states.versions["i5"].state == "rejected" and states.current == "i2"


async def test_without_a_user_the_split_is_per_call_never_per_key() -> None:
    from gateway.config.settings import parse_settings
    from gateway.serve.augment import Augmenter, LoadedTemplate, RouteServing, ServingSet
    from gateway.serve.pipeline import RequestContext
    from gateway.serve.policy_versions import Canary, PolicyVersions
    from gateway.serve.templating import CompiledTemplate, Template
    from policies.base import Features
    from policies.learned import LearnedPolicy

    settings = parse_settings({"providers": {"p": {"kind": "fake"}}, "models": {"m": {"provider": "p", "name": "m"}},
                               "routes": {"bot": {"variants": ["m"]}}})
    aug = Augmenter(lambda: settings, lambda: None)
    cur = LoadedTemplate("t1", CompiledTemplate(Template("Current.")))
    can = LoadedTemplate("t2", CompiledTemplate(Template("Canary.")))
    aug.install("bot", RouteServing(ServingSet(cur, None), can, None, 0.5))
    msgs = [{"role": "user", "content": "hi"}]

    async def served(ctx: RequestContext) -> str | None:
        a = await aug.augment("bot", msgs, ctx)
        assert a is not None
        return a.template_version

    # one app, one key, no user: its calls land on both sides
    keyed = {await served(RequestContext(f"call-{i}", key_name="the-app")) for i in range(40)}
    assert keyed == {"t1", "t2"}
    # a conversation stays on one side
    assert len({await served(RequestContext(f"s-{i}", key_name="the-app", session_id="conv-1"))
                for i in range(20)}) == 1

    live = LearnedPolicy(["a", "b"], explore=0.0)
    canary = LearnedPolicy(["a", "b"], explore=0.0)
    versions = PolicyVersions(lambda: None)  # type: ignore[arg-type, return-value]  # share recorded: no settings read
    versions.canaries["bot"] = Canary("p2", {}, canary, live, share=0.5)
    arms = {versions.arm("bot", live, Features("bot", None, "the-app", 10, 1, False))[1] for _ in range(40)}
    assert arms == {None, "p2"}
    sticky = {versions.arm("bot", live, Features("bot", "alice", "the-app", 10, 1, False))[1] for _ in range(20)}
    assert len(sticky) == 1


async def test_a_rolled_back_index_is_blamed_for_the_examples_its_bad_calls_retrieved(store: SqlStore) -> None:
    from learners.canary_facts import blamed

    reg = ArtifactRegistry(store)
    await reg.save_candidate("bot", "index", {"v": 1}, M, version="i1")
    await reg.move("bot", "index", "i1", "promoted", "seed")
    body = {"examples": [{"id": "poison", "output": "All sales are final."}, {"id": "good", "output": "14 days"},
                         {"id": "unused", "output": "Free"}, {"id": "twin", "output": "all sales are  final."}]}
    await reg.save_candidate("bot", "index", body, M, version="i2",
                             evaluation={"offline": {"delta": 0.0}, "added": ["poison", "good", "unused", "twin"]})
    rollout = Rollout(reg, lambda: CFG)
    await rollout.begin("bot", "index", "i2", "offline ok")
    t = (await reg.states("bot", "index")).versions["i2"].since
    for i in range(30):
        await _serve(store, "index", "i1", i % 10 != 0, t + 1 + i)  # current: 90 % good
    for n in range(8):  # the canary's calls: the poisoned example retrieved into the bad ones
        cid = f"k{next(_ids):06d}"
        bad = n % 4 != 0
        await store.insert_calls([CallRecord(id=cid, route="bot", variant="m", model="m", created_at=t + 50 + n,
                                             index_version="i2", retrieved_ids=["poison"] if bad else ["good"])])
        await store.insert_feedback(FeedbackRecord(cid, rating=-1 if bad else 1, created_at=t + 50.1 + n))
    [d, *_] = await rollout.check("bot", ("index",), "any")
    assert d.action == "rolled_back"
    rec = await reg.get("bot", "index", "i2")
    # retrieved into bad calls, or giving the same answer as one that was (a batch repeats its lie)
    assert rec is not None and rec.evaluation["implicated"] == ["poison", "twin"]
    assert blamed(rec.evaluation) == ["poison", "twin"]  # "good" and "unused" may come back in the next index
    assert blamed({"added": ["a", "b"]}) == ["a", "b"]  # refused offline, or rolled back by a person: all


def _index_body(*ids: str) -> dict[str, object]:
    return {"embedder": "e", "retrieval": {"k": 4}, "examples": [{"id": i} for i in ids]}


async def test_an_index_grown_from_the_running_canary_takes_its_place_and_its_evidence(store: SqlStore) -> None:
    reg = ArtifactRegistry(store)
    rollout = Rollout(reg, lambda: CFG)
    # current holds an example the canaries leave out: they do not only add to it (else they open at the cap)
    await reg.save_candidate("bot", "index", _index_body("a", "z"), M, version="i1")
    await reg.move("bot", "index", "i1", "promoted", "seed")
    await reg.save_candidate("bot", "index", _index_body("a", "b"), M, version="i2")
    await rollout.begin("bot", "index", "i2", "online only")
    await reg.set_share("bot", "index", "i2", 0.3, "wider")
    t = (await reg.states("bot", "index")).versions["i2"].since
    for n in range(4):  # the canary's evidence so far: 4 good calls
        await _serve(store, "index", "i2", True, t + 1 + n)
        await _serve(store, "index", "i1", False, t + 1.5 + n)
    # a newer candidate with every example of the canary and one more: it replaces the canary
    await reg.save_candidate("bot", "index", _index_body("a", "b", "c"), M, version="i3")
    d = await rollout.begin("bot", "index", "i3", "online only")
    assert d.action == "canary" and "in place of i2, grown from it (+1 examples)" in d.reason and d.share == 0.3
    states = await reg.states("bot", "index")
    assert states.canary == "i3" and states.versions["i2"].state == "rejected" and states.versions["i3"].share == 0.3
    # one that drops an example of the canary queues behind it as before
    await reg.save_candidate("bot", "index", _index_body("a", "c", "d"), M, version="i4")
    assert (await rollout.begin("bot", "index", "i4", "offline ok")).action == "queued"
    # ... unless a newer correction of the same question replaced what it drops (its evaluation says so)
    await reg.save_candidate("bot", "index", _index_body("a", "b", "d"), M, version="i6",
                             evaluation={"replaced": ["c"]})
    assert await rollout.facts.grown("bot", "index", "i3", "i6") == 1
    assert await rollout.facts.grown("bot", "index", "i3", "i4") is None
    # so does one with every example and more, retrieved another way (raced settings change every call)
    await reg.save_candidate("bot", "index", {**_index_body("a", "b", "c", "d"), "retrieval": {"k": 8}}, M,
                             version="i5")
    assert (await rollout.begin("bot", "index", "i5", "offline ok")).action == "queued"
    await _serve(store, "index", "i3", True, t + 10)
    decisions = await rollout.check("bot", ("index",), "any")
    assert decisions[0].version == "i3" and decisions[0].action == "promoted"  # i2's 4 calls + i3's 1
    assert decisions[0].online is not None and decisions[0].online.canary_n == 5


def test_an_index_that_only_adds_to_current_is_promoted_on_less_evidence_of_a_tie() -> None:
    rule = Rule.of(CFG)
    # a canary a little ahead on 20 calls: for an arbitrary change, not yet sure it is not worse
    assert decide(ArmEvidence(20, 12), ArmEvidence(80, 42), rule).verdict == "continue"
    # an index holding all of current's examples and more: `canary_grow_confidence` (0.8) promotes it
    grown = decide(ArmEvidence(20, 12), ArmEvidence(80, 42), rule, grows=True)
    assert grown.verdict == "promote" and "only adds examples to current" in grown.why
    # it is rolled back like any other when it is worse
    assert decide(ArmEvidence(10, 2), ArmEvidence(80, 60), rule, grows=True).verdict == "roll_back"


async def test_a_retrieval_change_that_is_not_ahead_is_set_aside_for_an_index_that_adds_to_current(
        store: SqlStore) -> None:
    from learners.growth import serving_index

    reg = ArtifactRegistry(store)
    rollout = Rollout(reg, lambda: CFG)
    await reg.save_candidate("bot", "index", _index_body("a"), M, version="i1")
    await reg.move("bot", "index", "i1", "promoted", "seed")
    # a raced settings change with one more example: a canary on its own evidence
    await reg.save_candidate("bot", "index", {**_index_body("a", "b"), "retrieval": {"k": 8}}, M, version="i2")
    assert (await rollout.begin("bot", "index", "i2", "offline tie")).action == "canary"
    t = (await reg.states("bot", "index")).versions["i2"].since
    for n in range(6):  # a tie so far
        await _serve(store, "index", "i2", n % 2 == 0, t + 1 + n)
        await _serve(store, "index", "i1", n % 2 == 0, t + 1.5 + n)
    # corrections grow current, not the canary that retrieves another way ...
    serving = await serving_index(reg, "bot")
    assert serving is not None and serving.version == "i1"
    # ... and the index they make takes the canary's place, open at the cap
    await reg.save_candidate("bot", "index", _index_body("a", "c"), M, version="i3")
    d = await rollout.begin("bot", "index", "i3", "online only")
    states = await reg.states("bot", "index")
    assert d.action == "canary" and states.canary == "i3" and d.share == CFG.canary_max_share
    assert states.versions["i2"].state == "rejected"
    [aside] = [t for t in await reg.history("bot", "index") if t.version == "i2" and t.to_state == "rejected"]
    assert "set aside for i3, which only adds 1 examples to current i1" in aside.reason


async def test_a_retrieval_change_that_is_ahead_keeps_its_canary(store: SqlStore) -> None:
    reg = ArtifactRegistry(store)
    rollout = Rollout(reg, lambda: CFG)
    await reg.save_candidate("bot", "index", _index_body("a"), M, version="i1")
    await reg.move("bot", "index", "i1", "promoted", "seed")
    await reg.save_candidate("bot", "index", {**_index_body("a", "b"), "retrieval": {"k": 8}}, M, version="i2")
    await rollout.begin("bot", "index", "i2", "offline tie")
    t = (await reg.states("bot", "index")).versions["i2"].since
    for n in range(6):  # the canary answers well, current badly
        await _serve(store, "index", "i2", True, t + 1 + n)
        await _serve(store, "index", "i1", n == 0, t + 1.5 + n)
    await reg.save_candidate("bot", "index", _index_body("a", "c"), M, version="i3")
    assert (await rollout.begin("bot", "index", "i3", "online only")).action == "queued"
    assert (await reg.states("bot", "index")).canary == "i2"


async def test_an_index_that_only_adds_is_judged_on_the_calls_that_retrieved_what_it_adds(store: SqlStore) -> None:
    reg = ArtifactRegistry(store)
    rollout = Rollout(reg, lambda: CFG)
    await reg.save_candidate("bot", "index", _index_body("a"), M, version="i1")
    await reg.move("bot", "index", "i1", "promoted", "seed")
    await reg.save_candidate("bot", "index", _index_body("a", "poison"), M, version="i2")
    assert (await rollout.begin("bot", "index", "i2", "online only")).action == "canary"
    t = (await reg.states("bot", "index")).versions["i2"].since
    for n in range(12):  # current: mostly right
        await _serve(store, "index", "i1", n % 6 != 0, t + 1 + n)
    for n in range(10):  # the canary's calls that never retrieved what it adds: right, as current
        await _serve(store, "index", "i2", True, t + 20 + n)
    for n in range(6):  # those that did: wrong
        cid = f"p{next(_ids):06d}"
        await store.insert_calls([CallRecord(id=cid, route="bot", variant="m", model="m", created_at=t + 40 + n,
                                             index_version="i2", retrieved_ids=["a", "poison"])])
        await store.insert_feedback(FeedbackRecord(cid, rating=-1, created_at=t + 40.1 + n))
    [d, *_] = await rollout.check("bot", ("index",), "any")
    assert d.action == "rolled_back" and d.online is not None and d.online.canary_n == 6
