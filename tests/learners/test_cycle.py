"""A learning cycle's checks: guardrails refuse (and record why), the judge metric asks a route
through the gateway, and the evaluation budget bounds the calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.privacy.scrubber import Scrubber
from gateway.serve.templating import Demonstration, Template
from gateway.store.artifacts import Manifest
from learners.guardrails import check_index_candidate, check_template_candidate
from retrieval.examples import Example
from tests.learners.scenario import ROUTE, Client, config, correct_everything, truth

SCRUBBER = Scrubber()
M = Manifest(produced_by="test", evidence_call_ids=("c1",))


def test_template_guardrails() -> None:
    ok = Template("Be brief, {{ route }}.", ("Answers about refunds must mention: 14 days",),
                  (Demonstration("How do refunds work?", "Within 14 days.", "c1#f"),))
    assert check_template_candidate(ok, M, route="bot", max_chars=1000, scrubber=SCRUBBER) == []
    leaky = ok.replace(demonstrations=(Demonstration("Email me", "Write to jane.doe@example.com", "c2#f"),))
    assert any("PII in demonstration 1 output: EMAIL" in p for p in
               check_template_candidate(leaky, M, route="bot", max_chars=1000, scrubber=SCRUBBER))
    redacted = ok.replace(instructions=("Call <PHONE> for refunds",))
    assert any("redacted text" in p for p in check_template_candidate(redacted, M, route="bot", max_chars=1000,
                                                                      scrubber=None))
    assert any("limit 10" in p for p in check_template_candidate(ok, M, route="bot", max_chars=10, scrubber=None))
    assert any("no provenance" in p for p in
               check_template_candidate(ok, Manifest(produced_by="x"), route="bot", max_chars=999, scrubber=None))
    escape = Template("{{ ''.__class__ }}")
    assert any("does not render" in p for p in check_template_candidate(escape, M, route="bot", max_chars=999,
                                                                         scrubber=None))


def test_index_guardrails() -> None:
    good = [Example("c1#f", "How do refunds work?", "Within 14 days.", "c1", "correction", 1.0)]
    assert check_index_candidate(good, M, max_examples=10, scrubber=SCRUBBER) == []
    bad = [*good, Example("c2#f", "Call me on +44 20 7946 0958", "Sure.", "", "rated", 2.0)]
    problems = check_index_candidate(bad, M, max_examples=1, scrubber=SCRUBBER)
    assert any("limit 1" in p for p in problems)
    assert any("PII in example c2#f input: PHONE" in p for p in problems)
    assert any("example c2#f has no source call" in p for p in problems)


def test_a_refused_candidate_is_stored_as_rejected_with_why(make_gateway: Any, fake_upstream: str,
                                                            tmp_path: Path) -> None:
    c = Client(make_gateway(config(fake_upstream, tmp_path, max_template_chars=120)).url)
    correct_everything(c)
    report = c.learn()
    template = next(x for x in report["candidates"] if x["kind"] == "template")
    assert template["outcome"] == "rejected" and template["reason"].startswith("guardrails: template is ")
    row = next(r for r in c.get(f"/admin/routes/{ROUTE}/templates")["data"] if r["version"] == template["version"])
    assert row["state"] == "rejected" and row["evaluation"]["guardrails"]
    log = c.get(f"/admin/routes/{ROUTE}/log", kind="template")["data"]
    assert any(e["to_state"] == "rejected" and e["reason"].startswith("guardrails:") for e in log)


def test_judge_metric_asks_the_judge_route_through_the_gateway(make_gateway: Any, fake_upstream: str,
                                                               tmp_path: Path) -> None:
    cfg = config(fake_upstream, tmp_path, metric="judge", judge_route="judge", demo_trials=0)
    # The judge grades 1 exactly when the answer is one of the true answers (scripted fake replies).
    cfg["providers"]["judging"] = {"kind": "fake", "replies": {
        "Answer: You can return": "1", "Answer: Shipping is free": "1", "Answer: Use the Forgot": "1.0"}}
    cfg["models"]["judge"] = {"provider": "judging", "name": "judge-1"}
    c = Client(make_gateway(cfg).url)
    correct_everything(c)
    report = c.learn()
    index = next(x for x in report["candidates"] if x["kind"] == "index")
    ev = index["evaluation"]
    assert ev["metric"] == "judge" and ev["current"] == 0.0 and ev["candidate"] == 1.0, ev
    assert report["eval_calls"] >= 4 * ev["n"]  # two replays and two judge calls per held-out call


def test_the_evaluation_budget_bounds_a_run(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    c = Client(make_gateway(config(fake_upstream, tmp_path, max_eval_calls=3)).url)
    correct_everything(c)
    report = c.learn()
    assert report["eval_calls"] <= 3
    assert all(x["outcome"] == "rejected" for x in report["candidates"] if x["kind"] == "index")
    index = next(x for x in report["candidates"] if x["kind"] == "index")
    assert "evaluation budget spent" in index["reason"]


def test_a_small_budget_is_shared_so_the_candidate_still_has_paired_cases(
        make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    # ~9 held-out cases, 10 calls: replaying them all for current would leave the index candidate
    # one case; the cycle cuts the cases so both arms replay the same ones
    c = Client(make_gateway(config(fake_upstream, tmp_path, max_eval_calls=10)).url)
    correct_everything(c)
    report = c.learn()
    index = next(x for x in report["candidates"] if x["kind"] == "index")
    assert index["evaluation"]["n"] >= 2 and "budget spent" not in index["reason"], index
    assert report["eval_calls"] <= 10


def test_with_too_few_held_out_calls_the_index_is_judged_online_without_replays(
        make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    # a young route: fewer held-out calls than min_samples, so the offline gate could decide nothing
    c = Client(make_gateway(config(fake_upstream, tmp_path, min_samples=50)).url)
    correct_everything(c)
    report = c.learn()
    [index] = [x for x in report["candidates"] if x["kind"] == "index"]
    assert index["outcome"] == "canary" and "judged online by the canary alone" in index["reason"]
    assert report["eval_calls"] == 0 and report["eval_cached"] == 0  # nothing replayed
    assert any(s.startswith("template: ") and "need 50" in s for s in report["skipped"])
    assert not [x for x in report["candidates"] if x["kind"] == "template"]
    row = next(r for r in c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["data"]
               if r["version"] == index["version"])
    assert row["state"] == "canary" and row["evaluation"]["offline"] is None and row["evaluation"]["online_only"]


def test_an_index_that_only_adds_examples_keeps_the_raced_retrieval_and_replays_nothing(
        make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    from gateway.config.settings import LearnerSettings
    from learners.dataset import in_heldout

    c = Client(make_gateway(config(fake_upstream, tmp_path, canary_share=0.0)).url)
    correct_everything(c)
    first = next(x for x in c.learn()["candidates"] if x["kind"] == "index")
    assert first["outcome"] == "promoted" and first["evaluation"] is not None  # raced on the held-out calls

    def stored(version: str) -> dict[str, Any]:
        rows = c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["data"]
        return dict(next(r for r in rows if r["version"] == version)["evaluation"])

    raced = stored(first["version"])
    assert raced["tuned_on"] >= 2 and raced["retrieval"]
    # one more correction on the training side (a held-out one would change what was raced on)
    seed = LearnerSettings().seed
    for i in range(40):
        call_id, _, _ = c.ask(f"new-{i}", f"Which carrier brings parcel {i} to Iceland, and at what price?")
        if not in_heldout(call_id, seed, 0.5):
            c.feedback(call_id, correction=truth("shipping"))
            break
    report = c.learn()
    [grown] = [x for x in report["candidates"] if x["kind"] == "index"]
    assert grown["outcome"] == "promoted" and "only adds 1 examples" in grown["reason"], grown
    assert grown["evaluation"] is None and not any(h.startswith("index") for h in report["eval_halving"])
    ev = stored(grown["version"])
    assert ev["online_only"] and ev["retrieval"] == raced["retrieval"] and ev["tuned_on"] == raced["tuned_on"]


def test_a_newer_correction_of_a_corrected_question_is_growth_too(
        make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    from gateway.config.settings import LearnerSettings
    from learners.dataset import in_heldout
    from tests.learners.scenario import TOPICS

    c = Client(make_gateway(config(fake_upstream, tmp_path, canary_share=0.0)).url)
    correct_everything(c)
    first = next(x for x in c.learn()["candidates"] if x["kind"] == "index")
    assert first["outcome"] == "promoted"
    # the same question asked again and corrected anew: the newest correction replaces the older
    # one, which changes only the calls that retrieve it, as an added example does
    seed, question = LearnerSettings().seed, TOPICS["shipping"][0][0]
    for i in range(40):
        call_id, _, _ = c.ask(f"again-{i}", question)
        if not in_heldout(call_id, seed, 0.5):
            c.feedback(call_id, correction="Shipping is free on orders over 60 euros, otherwise it costs 5.90 euros.")
            break
    report = c.learn()
    [swapped] = [x for x in report["candidates"] if x["kind"] == "index"]
    assert swapped["outcome"] == "promoted", swapped
    assert "only adds 1 examples (1 replacing older corrections" in swapped["reason"], swapped
    assert swapped["evaluation"] is None and not any(h.startswith("index") for h in report["eval_halving"])
    rows = c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["data"]
    ev = next(r for r in rows if r["version"] == swapped["version"])["evaluation"]
    assert len(ev["replaced"]) == 1 and ev["removed"] == ev["replaced"] and len(ev["added"]) == 1


def test_an_index_replayed_while_the_grow_lane_served_more_does_not_drop_those(
        make_gateway: Any, fake_upstream: str, tmp_path: Path, monkeypatch: Any) -> None:
    import asyncio

    from learners.cycle import LearningCycle
    from tests.learners.scenario import TOPICS, UNSEEN

    gw = make_gateway(config(fake_upstream, tmp_path, canary_share=0.0))
    c = Client(gw.url)
    corrected = 0
    for topic in ("returns", "shipping"):
        for i, q in enumerate(TOPICS[topic][0]):
            call_id, _, _ = c.ask(f"u-{topic}-{i}", q)
            c.feedback(call_id, correction=truth(topic))
            corrected += 1
    original, grown = LearningCycle._tune, []

    async def tune(self: LearningCycle, cand: Any, grid: Any) -> Any:
        out = await original(self, cand, grid)
        if self.lane == "full" and not grown:  # while its replays ran: password corrected, the grow lane serves it
            questions, answer = TOPICS["password"]
            for i, q in enumerate(questions):
                call_id, _, _ = await asyncio.to_thread(c.ask, f"u-password-{i}", q)
                await asyncio.to_thread(c.feedback, call_id, correction=answer)
            grown.append(await gw.learning.learn_route(ROUTE, lane="grow"))
        return out

    monkeypatch.setattr(LearningCycle, "_tune", tune)
    c.learn()  # the full lane, replaying an index of the first two topics' corrections
    assert [x.outcome for x in grown[0].candidates if x.kind == "index"] == ["promoted"]
    monkeypatch.setattr(LearningCycle, "_tune", original)
    current = c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["current"]
    row = next(r for r in c.get(f"/admin/routes/{ROUTE}/templates", kind="index")["data"] if r["version"] == current)
    assert row["note"].startswith(f"{corrected + 6} examples"), row["note"]  # password's are kept
    assert c.ask("reader", UNSEEN["password"])[1] == truth("password")


def test_an_index_refit_with_corrections_from_its_replays_is_recorded_by_what_it_holds(
        make_gateway: Any, fake_upstream: str, tmp_path: Path, monkeypatch: Any) -> None:
    import asyncio

    from learners.cycle import LearningCycle
    from learners.index import example_ids, index_content
    from tests.learners.scenario import TOPICS

    gw = make_gateway(config(fake_upstream, tmp_path, canary_share=0.0))
    c = Client(gw.url)
    for topic in ("returns", "shipping"):
        for i, q in enumerate(TOPICS[topic][0]):
            call_id, _, _ = c.ask(f"u-{topic}-{i}", q)
            c.feedback(call_id, correction=truth(topic))
    tune, settle = LearningCycle._tune, LearningCycle._settle
    arrived: list[str] = []
    settled: list[tuple[Any, Manifest, Any]] = []

    async def tune_then_correct(self: LearningCycle, cand: Any, grid: Any) -> Any:
        out = await tune(self, cand, grid)
        if not arrived:  # corrections arrive while the index is replayed (and no grow lane serves them)
            questions, answer = TOPICS["password"]
            for i, q in enumerate(questions):
                call_id, _, _ = await asyncio.to_thread(c.ask, f"u-password-{i}", q)
                await asyncio.to_thread(c.feedback, call_id, correction=answer)
                arrived.append(call_id)
        return out

    async def recording(self: LearningCycle, kind: Any, body: Any, manifest: Manifest, *args: Any,
                        **kwargs: Any) -> Any:
        if kind == "index":
            settled.append((body, manifest, kwargs.get("content")))
        return await settle(self, kind, body, manifest, *args, **kwargs)

    monkeypatch.setattr(LearningCycle, "_tune", tune_then_correct)
    monkeypatch.setattr(LearningCycle, "_settle", recording)
    c.learn()
    [(body, manifest, content)] = settled
    assert "arrived during its evaluation" in manifest.note, manifest.note  # refit with them
    # its judgement is remembered by what it holds, so the same index is not judged again
    assert content == index_content(body["embedder"], example_ids(body))
