"""Call and feedback ids: unique, unguessable-shaped, and never repeated across a fork."""

from __future__ import annotations

import multiprocessing
import re
from multiprocessing.connection import Connection

from gateway.store.records import new_id


def test_ids_carry_prefix_and_96_random_bits() -> None:
    ids = [new_id("chatcmpl") for _ in range(20_000)]  # several refills of the random pool
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def _child_id(conn: Connection) -> None:
    conn.send(new_id("x"))


def test_a_forked_process_does_not_reuse_the_parents_random_pool() -> None:
    new_id("x")  # the parent's pool is filled before the fork
    parent_end, child_end = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_child_id, args=(child_end,))
    proc.start()
    child = parent_end.recv()
    proc.join(10)
    assert child != new_id("x")
