"""`evolve`: the writer's copy-with-changes of a record."""

from __future__ import annotations

import pytest

from gateway.store.records import evolve
from tests.store.factories import make_call, make_feedback


def test_evolve_changes_the_named_fields_of_a_copy_only() -> None:
    call = make_call(1)
    scrubbed = evolve(call, request=None, error="e")
    assert (scrubbed.request, scrubbed.error) == (None, "e")
    assert scrubbed.attempts is call.attempts and scrubbed.id == call.id
    assert call.request is not None and call.error is None
    fb = make_feedback(call.id)
    assert evolve(fb, comment="c") == make_feedback(call.id, comment="c")


def test_evolve_refuses_a_field_the_record_does_not_have() -> None:
    with pytest.raises(TypeError, match="CallRecord has no field 'colour'"):
        evolve(make_call(1), colour="red")
