"""When an index skips the replays (it only adds to the serving one) and when retrieval is raced again."""

from __future__ import annotations

from learners.growth import ServingIndex, overtaken
from retrieval.lexical import Tuning


def test_only_a_strict_superset_grows_the_serving_index() -> None:
    serving = ServingIndex("i3", frozenset({"a", "b"}), "minilm", Tuning(), tuned_on=10)
    assert serving.grown_by(frozenset({"a", "b", "c", "d"}), "minilm") == 2
    assert serving.grown_by(frozenset({"a", "b"}), "minilm") == 0  # the same examples: nothing new
    assert serving.grown_by(frozenset({"a", "c", "d"}), "minilm") == 0  # leaves b out: replayed against current
    assert serving.grown_by(frozenset({"a", "b", "c"}), "static") == 0  # re-embedded: every vector changed


def test_retrieval_is_raced_again_when_never_raced_or_the_held_out_set_doubled() -> None:
    assert ServingIndex("i1", frozenset(), "minilm", None, tuned_on=0).tuning_due(5)
    raced = ServingIndex("i2", frozenset(), "minilm", Tuning(), tuned_on=10)
    assert not raced.tuning_due(19) and raced.tuning_due(20)


def test_examples_a_newer_correction_replaced_may_be_left_out() -> None:
    serving = ServingIndex("i3", frozenset({"a", "b"}), "minilm", Tuning(), tuned_on=10)
    assert serving.grown_by(frozenset({"a", "c"}), "minilm", replaced=frozenset({"b"})) == 1  # c replaces b
    assert serving.grown_by(frozenset({"c"}), "minilm", replaced=frozenset({"b"})) == 0  # a left out too
    assert serving.grown_by(frozenset({"a"}), "minilm", replaced=frozenset({"b"})) == 0  # nothing added


def test_an_index_replayed_against_an_older_one_may_not_drop_what_serves_since() -> None:
    before = ServingIndex("i1", frozenset({"a"}), "minilm", Tuning(), tuned_on=0)
    now = ServingIndex("i2", frozenset({"a", "b", "c"}), "minilm", Tuning(), tuned_on=0)
    assert overtaken(before, before, frozenset({"a", "x"}), Tuning()) is None  # nothing served meanwhile
    assert overtaken(before, now, frozenset({"a", "b", "c", "x"}), Tuning()) is None  # keeps b and c
    assert "leaves out 2 of i2's examples" in str(overtaken(before, now, frozenset({"a", "x"}), Tuning()))
    assert overtaken(before, now, frozenset({"a", "b"}), Tuning(), replaced=frozenset({"c"})) is None
    assert "same examples" in str(overtaken(before, now, frozenset({"a", "b", "c"}), Tuning()))
    assert "leaves out 3" in str(overtaken(None, now, frozenset({"x"}), Tuning()))  # nothing served when replayed
