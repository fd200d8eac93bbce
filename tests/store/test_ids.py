"""Call and feedback ids: unique, unguessable-shaped, time-ordered, and never repeated across a fork."""

from __future__ import annotations

import multiprocessing
import re
import time
from multiprocessing.connection import Connection

from gateway.store.records import new_id


def test_ids_carry_prefix_milliseconds_and_96_random_bits() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id("chatcmpl") for _ in range(20_000)]  # several refills of the random pool
    after = time.time_ns() // 1_000_000
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{11}[0-9a-f]{24}", i) for i in ids)
    assert all(before <= int(i[9:20], 16) <= after for i in ids)
    assert len(set(ids)) == len(ids)
    assert len({i[20:] for i in ids}) == len(ids)  # the random part alone is unique too


def test_ids_made_in_later_milliseconds_sort_later() -> None:
    # primary keys that grow with time append at the end of the store's indexes
    first = new_id("chatcmpl")
    time.sleep(0.002)
    second = new_id("chatcmpl")
    assert first < second


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
