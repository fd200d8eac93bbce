"""Store -> dataset: corrections and good ratings become examples; bad, duplicate, stale or
private ones do not; the split is seeded and stable."""

from __future__ import annotations

from typing import Any

from gateway.privacy.scrubber import Scrubber
from gateway.serve.injected import client_messages
from gateway.store.records import CallRecord, FeedbackRecord
from learners.dataset import CurateConfig, curate, in_heldout, logged_call
from retrieval.embeddings import HashingEmbedder

EMB = HashingEmbedder()
T0 = 1_700_000_000.0


def call(cid: str, question: str, answer: str = "meh", *, at: float = 0.0, **kw: Any) -> CallRecord:
    return CallRecord(id=cid, route="bot", variant="a", model="a", created_at=T0 + at,
                      request={"model": "a", "messages": [{"role": "user", "content": question}],
                               "temperature": 0.1},
                      response={"choices": [{"message": {"role": "assistant", "content": answer}}]}, **kw)


def fb(cid: str, n: int, **kw: Any) -> FeedbackRecord:
    return FeedbackRecord(call_id=cid, id=f"fb-{cid}-{n}", created_at=T0 + 100 + n, **kw)


def cur(calls: list[CallRecord], feedback: list[FeedbackRecord], **cfg: Any) -> Any:
    return curate("bot", calls, feedback, EMB, scrubber=None, config=CurateConfig(**{"heldout_share": 0.0, **cfg}))


def test_newest_correction_of_a_call_wins_and_replaces_the_answer() -> None:
    ds = cur([call("c1", "How do I reset my password?")],
             [fb("c1", 1, correction="old fix"), fb("c1", 2, correction="Use the reset link."), fb("c1", 3, rating=-1)])
    (ex,) = ds.examples
    assert (ex.input, ex.output, ex.source, ex.id) == ("How do I reset my password?", "Use the reset link.",
                                                      "correction", "c1#fb-c1-2")
    assert ds.feedback_ids[ex.id] == ("fb-c1-2",)
    assert ds.corrections[0].answer == "meh"


def test_positive_ratings_count_unless_a_negative_signal_contradicts_them() -> None:
    calls = [call(f"c{i}", f"question number {i} about topic {i * 7}", f"answer {i}") for i in range(6)]
    feedback = [
        fb("c0", 1, rating=1),
        fb("c1", 1, score=0.9),
        fb("c2", 1, rating=1), fb("c2", 2, signal="regenerated", source="inferred"),
        fb("c3", 1, rating=-1),
        fb("c4", 1, score=0.5),
        fb("c5", 1, rating=1), fb("c5", 2, signal="abandoned"),
    ]
    ds = cur(calls, feedback)
    assert sorted(e.source_call_id for e in ds.examples) == ["c0", "c1"]
    assert {e.source for e in ds.examples} == {"rated"}
    assert ds.stats.negative == 3


def test_inferred_correction_is_negative_not_an_answer() -> None:
    ds = cur([call("c1", "capital of Australia?", "Sydney")],
             [fb("c1", 1, signal="corrected", comment="no, I meant Canberra", source="inferred"),
              fb("c1", 2, rating=1)])
    assert ds.examples == ()


def test_newer_correction_of_the_same_question_retires_the_older_and_rated_ones() -> None:
    q = "How long do I have to return an item?"
    calls = [call("old", q, at=1), call("new", q, at=2), call("rated", q + " ", "whatever", at=3)]
    feedback = [fb("old", 1, correction="30 days."), fb("new", 2, correction="14 days."), fb("rated", 3, rating=1)]
    ds = cur(calls, feedback)
    assert [(e.source_call_id, e.output) for e in ds.examples] == [("new", "14 days.")]
    assert {r[0] for r in ds.retired} == {"old#fb-old-1", "rated#rated"}


def test_near_duplicate_ratings_are_deduplicated() -> None:
    calls = [call(f"c{i}", "Where is my parcel?", "On its way.", at=i) for i in range(3)]
    ds = cur(calls, [fb(f"c{i}", i, rating=1) for i in range(3)])
    assert len(ds.examples) == 1 and ds.stats.duplicates == 2


def test_examples_with_pii_or_redactions_are_dropped() -> None:
    calls = [call("c1", "Mail me at jane.doe@example.com please"), call("c2", "What is my order status?"),
             call("c3", "Why was I charged twice?")]
    feedback = [fb("c1", 1, correction="Done."), fb("c2", 2, correction="Call <PHONE> for that."),
                fb("c3", 3, correction="Refunds take 5 days.")]
    ds = curate("bot", calls, feedback, EMB, scrubber=Scrubber(), config=CurateConfig(heldout_share=0))
    assert [e.source_call_id for e in ds.examples] == ["c3"]
    assert ds.stats.pii == 2


def test_blocked_examples_stay_out() -> None:
    ds = curate("bot", [call("c1", "q one here"), call("c2", "another question entirely")],
                [fb("c1", 1, correction="x"), fb("c2", 2, correction="y")], EMB, scrubber=None,
                config=CurateConfig(heldout_share=0), blocked={"c1#fb-c1-1"})
    assert [e.source_call_id for e in ds.examples] == ["c2"] and ds.stats.blocked == 1


def test_unusable_calls_are_skipped() -> None:
    calls = [call("c1", "failed one", status=502), call("c2", "no log", no_log=True),
             call("c3", "embedding", endpoint="embeddings")]
    ds = cur(calls, [fb(c.id, i, correction="fix") for i, c in enumerate(calls)])
    assert ds.examples == () and ds.stats.no_text == 3


def test_split_is_seeded_stable_and_heldout_cases_carry_references() -> None:
    calls = [call(f"c{i}", f"distinct question {i} words {i * 13}", at=i) for i in range(40)]
    feedback = [fb(f"c{i}", i, correction=f"fix {i}") for i in range(40)]
    a = cur(calls, feedback, heldout_share=0.3, seed=1)
    b = cur(list(reversed(calls)), list(reversed(feedback)), heldout_share=0.3, seed=1)
    c = cur(calls, feedback, heldout_share=0.3, seed=2)
    held = {h.call_id for h in a.heldout}
    assert held == {h.call_id for h in b.heldout} != {h.call_id for h in c.heldout}
    assert 4 <= len(held) <= 20
    assert {e.source_call_id for e in a.train}.isdisjoint(held)
    assert len(a.examples) == 40  # the index learns from every example; evaluation is leave-one-out
    case = a.heldout[0]
    assert case.reference == f"fix {case.call_id[1:]}" and case.params == {"temperature": 0.1}
    assert all(in_heldout(h, 1, 0.3) for h in held)


def test_client_messages_undo_the_augmentation() -> None:
    sent = [{"role": "system", "content": "TEMPLATE"}, {"role": "system", "content": "client system"},
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "shot q"}, {"role": "assistant", "content": "shot a"},
            {"role": "user", "content": "final"}]
    rec = CallRecord(id="c", route="bot", variant="a", model="a", template_version="t2",
                     retrieved_ids=["x#1"], request={"messages": sent})
    assert [m["content"] for m in client_messages(rec) or []] == ["client system", "first", "reply", "final"]
    logged = logged_call(rec)
    assert logged is not None and logged.question == "final"


def test_a_route_that_keeps_entities_keeps_names_in_its_examples_and_nothing_else() -> None:
    from learners.guardrails import pii_problems

    calls = [call("c1", "Extract the people: Angela Merkel met Emmanuel Macron in Paris."),
             call("c2", "Extract the people: write to jane.doe@example.com"),
             call("c3", "Extract the people: <PERSON> called.")]
    feedback = [fb("c1", 1, correction="Angela Merkel, Emmanuel Macron"), fb("c2", 2, correction="none"),
                fb("c3", 3, correction="none")]
    scrubber = Scrubber()
    default = curate("bot", calls, feedback, EMB, scrubber=scrubber, config=CurateConfig(heldout_share=0))
    assert [e.source_call_id for e in default.examples] == []  # by default, examples holding names are dropped
    kept = curate("bot", calls, feedback, EMB, scrubber=scrubber, config=CurateConfig(heldout_share=0),
                  keep={"PERSON"})
    assert [e.source_call_id for e in kept.examples] == ["c1"]  # the email and the redaction still go
    text = [("example", "Angela Merkel, Emmanuel Macron")]
    assert pii_problems(text, scrubber) and not pii_problems(text, scrubber, {"PERSON"})
