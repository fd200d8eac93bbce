"""The writer's journal: every queued line on local disk within one window, so a replica killed
with SIGKILL loses at most `[store] journal_ms` of answered calls however far its database
insert lags behind (bench.replicas had a CPU-starved writer 2,378 rows behind when it was killed).

Segments live in a folder per store under `[store] journal_dir` (`journal_folder`). The writer
hands the journal the lines queued since the last window (the spill format of
spill.py: one JSON line per record), and the journal appends them to its current *segment* as one
record with one write syscall. A written record is in the page cache, which outlives the process;
with `[store] journal_fsync` it is also on disk before the next window (a power cut then loses at
most one window too). Queued lines are not scrubbed yet (that happens in the writer's task), so a
record is encrypted: `length (4 bytes, big-endian) | nonce (12) | AES-256-GCM(lines)`, under a key
derived from the gateway's secret (`journal_key`), never in clear on disk.

A segment is deleted once every line in it is handled (inserted, spilled, or quarantined): the
writer passes how many queued lines are done, and each segment remembers how many had been queued
when it was last written. Segments rotate every `rotate_s`.

Who replays: each writer holds an exclusive `flock` on `<owner>.lock` in the journal folder for
its life, and the kernel releases it when the process dies, however it dies. Segments whose owner's
lock is free belong to a dead writer: any writer sharing the folder (a supervisor's restart of the
same replica, or a sibling replica) takes that lock, replays the segments through its own writer
(prepared, then inserted or spilled; known ids are skipped), and deletes them. Writers look at start
and every `[store] retry_s`.

Blocking file I/O: call from the writer's task (a write without fsync is one page-cache copy) or a
worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

_HEADER = 4  # record length, big-endian
_NONCE = 12
_SEGMENT = re.compile(r"^(?P<owner>[A-Za-z0-9_.-]+)\.(?P<n>\d{8})\.jrn$")


def journal_folder(base: str | Path, store_url: str) -> Path:
    """The journal folder of writers on `store_url` under `[store] journal_dir`: replicas of one store
    share it, and a gateway never replays rows meant for another store (a password change keeps it)."""
    parts = urlsplit(store_url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@", 1))
    return Path(base) / hashlib.blake2b(parts.geturl().encode(), digest_size=8).hexdigest()


def journal_key(secret: bytes) -> bytes:
    """The journal's AES-256 key, derived from a gateway secret (the user pseudonym key): replicas
    sharing that secret can read each other's journals; the secret itself is never used twice."""
    return hmac.new(secret, b"flywheel journal v1", hashlib.sha256).digest()


@dataclass(slots=True)
class _Segment:
    path: Path
    end: int  # queued lines counted when it was last written: handled up to here, it may go
    opened: float


class Journal:
    """This writer's segments in `directory` (see the module docstring)."""

    def __init__(self, directory: str | Path, key: bytes, *, fsync: bool = False, rotate_s: float = 2.0) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.rotate_s = rotate_s
        self.owner = f"{re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname())}-{os.getpid()}-{secrets.token_hex(4)}"
        self._aead = AESGCM(key)
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._current: _Segment | None = None
        self._closed: list[_Segment] = []
        self._next = 0
        self.written_bytes = 0
        self._failing = False

    def open(self) -> None:
        """Create the folder and hold this owner's lock (so no other writer replays us)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        while (fd := self._lock(self.owner)) is None:  # a replayer took it for a dead one's: a new name
            self.owner = f"{self.owner.rsplit('-', 1)[0]}-{secrets.token_hex(4)}"
        self._lock_fd = fd

    # -- this writer's segments ------------------------------------------------------------------

    def write(self, lines: Sequence[bytes], end: int) -> bool:
        """Append `lines` as one record; `end`: lines queued so far. False (logged once) when the
        disk refuses: the rows still go to the database, just without this safety net."""
        if not lines:
            return True
        try:
            seg = self._segment()
            nonce = os.urandom(_NONCE)
            sealed = self._aead.encrypt(nonce, b"".join(lines), None)
            data = (len(sealed) + _NONCE).to_bytes(_HEADER, "big") + nonce + sealed
            assert self._fd is not None
            view = memoryview(data)
            while view:  # one syscall unless the kernel takes part of it
                view = view[os.write(self._fd, view):]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:
            if not self._failing:
                log.error("journal %s not writable (%s); answered calls are not journaled until it is",
                          self.directory, e)
            self._failing = True
            return False
        if self._failing:
            log.warning("journal %s writable again", self.directory)
        self._failing = False
        seg.end = end
        self.written_bytes += len(data)
        if time.monotonic() - seg.opened >= self.rotate_s:
            self._rotate()
        return True

    def release(self, done: int) -> None:
        """Delete segments whose lines are all handled (`done`: queued lines handled, in order);
        the current one is emptied in place when it is."""
        keep = []
        for seg in self._closed:
            if seg.end <= done:
                seg.path.unlink(missing_ok=True)
            else:
                keep.append(seg)
        self._closed = keep
        if self._current is not None and self._fd is not None and self._current.end <= done:
            with contextlib.suppress(OSError):
                if os.fstat(self._fd).st_size:
                    os.ftruncate(self._fd, 0)

    def close(self, *, clean: bool) -> None:
        """Stop journaling; `clean`: every line is handled, so delete the segments and the lock
        (otherwise they stay for the next start to replay)."""
        self._rotate()
        if clean:
            for seg in self._closed:
                seg.path.unlink(missing_ok=True)
            self._closed = []
        if self._lock_fd is not None:
            if clean:
                self._lock_path(self.owner).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _segment(self) -> _Segment:
        if self._current is None:
            path = self.directory / f"{self.owner}.{self._next:08d}.jrn"
            self._next += 1
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._current = _Segment(path, 0, time.monotonic())
        return self._current

    def _rotate(self) -> None:
        if self._current is not None and self._fd is not None:
            os.close(self._fd)
            self._closed.append(self._current)
        self._current, self._fd = None, None

    def _lock_path(self, owner: str) -> Path:
        return self.directory / f"{owner}.lock"

    # -- dead writers' segments --------------------------------------------------------------------

    def orphans(self) -> list[str]:
        """Other owners in the folder (with segments, or a lock left by a writer killed with none):
        `claim` tells the dead from the living."""
        owners = set()
        with contextlib.suppress(FileNotFoundError):
            for p in self.directory.iterdir():
                m = _SEGMENT.match(p.name)
                owner = m["owner"] if m else p.name[:-5] if p.name.endswith(".lock") else None
                if owner and owner != self.owner:
                    owners.add(owner)
        return sorted(owners)

    def claim(self, owner: str) -> int | None:
        """Lock a dead owner's segments for replay: the lock's fd, or None when its writer (or
        another replayer) holds it."""
        return self._lock(owner)

    def _lock(self, owner: str) -> int | None:
        """An exclusive flock on `<owner>.lock`, or None when someone holds it. The file must still
        be the one at that path once locked: a replayer that finished deletes it, and a lock on the
        deleted file would guard nothing."""
        path = self._lock_path(owner)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        return fd

    def segments(self, owner: str) -> list[Path]:
        """`owner`'s segments in write order."""
        found = [p for p in self.directory.glob(f"{owner}.*.jrn") if (m := _SEGMENT.match(p.name)) and
                 m["owner"] == owner]
        return sorted(found)

    def lines(self, path: Path) -> list[bytes]:
        """The queued lines of a segment, in order. A torn last record (a crash mid-write) ends it;
        a record that does not decrypt (another key) raises ValueError."""
        data = path.read_bytes()
        out: list[bytes] = []
        pos = 0
        while pos + _HEADER <= len(data):
            size = int.from_bytes(data[pos:pos + _HEADER], "big")
            start, pos = pos + _HEADER, pos + _HEADER + size
            if pos > len(data) or size <= _NONCE:
                log.warning("journal %s: a torn last record (%d bytes) ignored", path, len(data) - start)
                break
            try:
                plain = self._aead.decrypt(data[start:start + _NONCE], data[start + _NONCE:pos], None)
            except InvalidTag as e:
                raise ValueError(f"journal segment {path.name} does not decrypt with this gateway's key") from e
            out += [line + b"\n" for line in plain.split(b"\n") if line]  # spill lines (spill.py)
        return out

    def finish(self, owner: str, fd: int) -> None:
        """A dead owner's segments are all replayed: remove its lock and let it go."""
        self._lock_path(owner).unlink(missing_ok=True)
        os.close(fd)
