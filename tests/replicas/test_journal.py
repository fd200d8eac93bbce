"""Nothing answered is lost on SIGKILL: a writer whose database lags far behind journals every queued
row within `journal_ms` (encrypted), and the next writer on the journal folder (a restart, or a
sibling replica) replays a dead writer's segments; a live writer's are never touched, and segments
go once their rows are stored."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import open_store
from gateway.store.journal import Journal, journal_key
from gateway.store.sql import SqlStore
from gateway.store.writer import CallWriter
from tests.store.factories import make_call
from tests.store.test_writer import FlakyStore

KEY = journal_key(b"0123456789abcdef0123456789abcdef")
SECRET = "alice.secret@example.com"
pytestmark = pytest.mark.postgres  # replicas share a PostgreSQL store


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SqlStore]:
    """A migrated PostgreSQL store on the test's own schema."""
    s = open_store(pg_url)
    assert isinstance(s, SqlStore)
    await s.migrate()
    yield s
    await s.close()


# A writer whose database never answers (a lag of every row), killed with SIGKILL once its rows
# had one journal window: what a CPU-starved replica 2,378 rows behind looked like.
CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from gateway.store import open_store
    from gateway.store.journal import Journal, journal_key
    from gateway.store.writer import CallWriter
    from tests.store.factories import make_call
    from tests.store.test_writer import FlakyStore

    async def main(url, folder, n):
        store = FlakyStore(open_store(url))
        await store.migrate()
        store.hang = True
        journal = Journal(folder, journal_key(b"0123456789abcdef0123456789abcdef"))
        writer = CallWriter(store, Path(folder) / "spill.jsonl", batch_size=16, flush_ms=10, journal=journal,
                            journal_ms=20)
        await writer.start()
        for i in range(n):
            call = make_call(i, id=f"killed-{i:05d}")
            call.request["messages"][1]["content"] = "my email is alice.secret@example.com"
            writer.submit_call(call)
        await asyncio.sleep(0.3)  # a few journal windows; the inserts hang
        print("answered", writer.depth, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


async def _killed_writer(url: str, folder: Path, n: int) -> None:
    """Run CHILD and SIGKILL it once it has answered `n` calls."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, url, str(folder), str(n)], stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": "."})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith(b"answered"), line
        assert int(line.split()[1]) > 0  # the database took none of them: they were all behind
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


async def _stored(store: SqlStore, prefix: str, n: int) -> set[str]:
    return {c.id for c in await store.list_calls(limit=n + 10)} & {f"{prefix}-{i:05d}" for i in range(n)}


async def test_a_restarted_writer_stores_every_row_a_killed_one_had_answered(store: SqlStore, tmp_path: Path,
                                                                               pg_url: str) -> None:
    folder = tmp_path / "journal"
    await _killed_writer(pg_url, folder, 300)
    segments = list(folder.glob("*.jrn"))
    assert segments
    assert not any(SECRET.encode() in p.read_bytes() for p in segments)  # unscrubbed rows: never in clear
    assert len(await _stored(store, "killed", 300)) == 0

    writer = CallWriter(store, tmp_path / "spill2.jsonl", journal=Journal(folder, KEY), journal_ms=20)
    await writer.start()  # replays the dead writer's journal before serving
    try:
        assert len(await _stored(store, "killed", 300)) == 300
        assert writer.stats.replayed == 300
        assert not list(folder.glob("*.jrn"))  # replayed segments are gone, and the dead owner's lock
        assert [p.name for p in folder.glob("*.lock")] == [f"{writer._journal.owner}.lock"]  # type: ignore[union-attr]
    finally:
        await writer.stop()


async def test_a_running_sibling_replays_a_dead_writers_journal_but_never_a_live_ones(
    store: SqlStore, tmp_path: Path, pg_url: str
) -> None:
    folder = tmp_path / "journal"
    live_store = FlakyStore(store)
    live = CallWriter(live_store, tmp_path / "live.jsonl", flush_ms=10, journal=Journal(folder, KEY), journal_ms=20)
    await live.start()
    sibling = CallWriter(store, tmp_path / "sib.jsonl", retry_s=0.2, journal=Journal(folder, KEY), journal_ms=20)
    await sibling.start()
    try:
        live_store.hang = True  # the live writer lags: its segments hold rows, and it holds its lock
        for i in range(20):
            live.submit_call(make_call(i, id=f"live-{i:05d}"))
        await asyncio.sleep(0.3)
        assert list(folder.glob(f"{live._journal.owner}.*.jrn"))  # type: ignore[union-attr]
        await _killed_writer(pg_url, folder, 50)
        for _ in range(100):  # the sibling's retry round finds the dead one
            if len(await _stored(store, "killed", 50)) == 50:
                break
            await asyncio.sleep(0.1)
        assert len(await _stored(store, "killed", 50)) == 50
        assert len(await _stored(store, "live", 20)) == 0  # the live writer's rows are its own
        assert list(folder.glob(f"{live._journal.owner}.*.jrn"))  # type: ignore[union-attr]
    finally:
        await sibling.stop()
        live_store.hang = False
        await live.stop(timeout_s=1.0)


async def test_segments_go_once_their_rows_are_stored_and_a_clean_stop_leaves_nothing(
    store: SqlStore, tmp_path: Path
) -> None:
    folder = tmp_path / "journal"
    journal = Journal(folder, KEY, rotate_s=0.05)
    writer = CallWriter(store, tmp_path / "spill.jsonl", flush_ms=10, journal=journal, journal_ms=20)
    await writer.start()
    for round_ in range(5):
        for i in range(40):
            writer.submit_call(make_call(round_ * 100 + i, id=f"ok-{round_ * 100 + i:05d}"))
        await asyncio.sleep(0.06)
    await writer.flush()
    await asyncio.sleep(0.1)  # a journal window after the rows are stored
    assert writer.stats.journaled == 200
    assert sum(p.stat().st_size for p in folder.glob("*.jrn")) == 0  # written, then released
    await writer.stop()
    assert not list(folder.iterdir())  # no segment, no lock: nothing for anyone to replay


async def test_a_journal_under_another_key_is_kept_for_an_operator(store: SqlStore, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    other = Journal(folder, journal_key(b"another gateway's secret, 32 b.."))
    other.open()
    other.write([b'{"kind":"call","record":{}}\n'], 1)
    other._rotate()
    os.close(other._lock_fd)  # type: ignore[arg-type]  # it dies
    writer = CallWriter(store, tmp_path / "spill.jsonl", journal=Journal(folder, KEY))
    await writer.start()
    await writer.stop()
    assert [p.name.endswith(".jrn.unreadable") for p in folder.glob(f"{other.owner}.*")] == [True]



def test_each_store_has_its_own_journal_folder_and_a_password_does_not_count() -> None:
    from gateway.store.journal import journal_folder

    a = journal_folder("/data/journal", "postgresql://app:one@db:5432/flywheel")
    assert a == journal_folder("/data/journal", "postgresql://app:two@db:5432/flywheel")
    assert a != journal_folder("/data/journal", "postgresql://app:one@db:5432/other")
    assert a.parent == Path("/data/journal")
