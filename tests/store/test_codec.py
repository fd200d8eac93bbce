"""Records <-> rows: the writer spills the rows the database did not take as the records they came from."""

from __future__ import annotations

from gateway.store.codec import call_rows, calls_from_rows
from gateway.store.records import Escalation, evolve
from tests.store.factories import SYSTEM_5K, make_call


def test_rows_turn_back_into_the_records_they_were_built_from() -> None:
    calls = [
        make_call(1, system=SYSTEM_5K),  # the system prompt goes to a blob and comes back
        make_call(2, attempts=3, retrieved_ids=["ex-1"],
                  escalation=Escalation("small", "small", cost_usd=1e-7, same_answer=False)),
        make_call(3, attempts=0, error="no upstream answered", status=502),
    ]  # fmt: skip
    rows = call_rows(calls)
    assert len(rows.blobs) == 1 and len(rows.attempts) == 5
    assert calls_from_rows(rows) == calls


def test_a_no_log_call_turns_back_without_its_text() -> None:
    call = make_call(4, no_log=True)
    assert calls_from_rows(call_rows([call])) == [evolve(call, request=None, response=None)]
