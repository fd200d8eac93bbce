"""A throwaway PostgreSQL cluster of a test's own: initdb + pg_ctl on a free loopback port under a
temp dir. Outage tests stop and start THIS cluster, never the machine's shared one (stopping that
disconnects every other client of it).

initdb refuses to run as root, so as root the cluster belongs to the `postgres` system user
(`runuser -u postgres`), in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class ThrowawayCluster:
    """One initdb'd cluster on `port`; `stop()` / `start()` make an outage, `destroy()` removes it."""

    bin_dir: Path
    root: Path
    port: int
    as_user: str | None  # run the server as this user (when we are root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_user is not None:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.decode()[-2000:]}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c shared_buffers=16MB -c max_connections=40")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w",
                  "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server at once (`-m immediate`: like a crash or a network cut for the clients)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def make_cluster() -> ThrowawayCluster:
    """An initialised, started cluster; skips the test when PostgreSQL's binaries are missing."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="fw-pg-"))
    as_user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to own a throwaway cluster")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = "postgres"
    cluster = ThrowawayCluster(bin_dir, root, free_port(), as_user)
    try:
        cluster.init()
        cluster.start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


@pytest.fixture
def pg_cluster() -> Iterator[ThrowawayCluster]:
    """A throwaway PostgreSQL cluster on a free port; removed after the test."""
    cluster = make_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


def wait_down(url: str, timeout: float = 10.0) -> None:
    """Block until nothing accepts connections at `url`'s port (after `stop()`)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 5432)) != 0:
                return
        time.sleep(0.05)
