"""When an index skips the replays (it only adds to the serving one) and when retrieval is raced again."""

from __future__ import annotations

from learners.growth import ServingIndex
from retrieval.lexical import Tuning


def test_only_a_strict_superset_grows_the_serving_index() -> None:
    serving = ServingIndex("i3", frozenset({"a", "b"}), Tuning(), tuned_on=10)
    assert serving.grown_by(frozenset({"a", "b", "c", "d"})) == 2
    assert serving.grown_by(frozenset({"a", "b"})) == 0  # the same examples: nothing new
    assert serving.grown_by(frozenset({"a", "c", "d"})) == 0  # leaves b out: replayed against current


def test_retrieval_is_raced_again_when_never_raced_or_the_held_out_set_doubled() -> None:
    assert ServingIndex("i1", frozenset(), None, tuned_on=0).tuning_due(5)
    raced = ServingIndex("i2", frozenset(), Tuning(), tuned_on=10)
    assert not raced.tuning_due(19) and raced.tuning_due(20)
