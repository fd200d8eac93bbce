"""Relative paths in config.toml resolve against the config file, and read-only commands refuse to
create a database: run from a directory other than the repository root and the config's own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.settings import load_settings
from gateway.store import open_store, sqlite_path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[store]
url = "sqlite:///data/f.db"
[providers.p]
kind = "fake"
[models.m]
provider = "p"
name = "x"
[routes.r]
variants = ["m"]
template = "seed.md"
[learners]
enabled = false
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.toml").write_text(CONFIG)
    (proj / "seed.md").write_text("Be brief.")
    (tmp_path / "elsewhere").mkdir()
    return proj


def flywheel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLYWHEEL_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "flywheel.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_every_relative_path_resolves_against_the_config_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.parent / "elsewhere")
    s = load_settings(Path("..") / "proj" / "config.toml")
    assert sqlite_path(s.store.url) == str(project / "data" / "f.db")
    assert s.store.spill_path == str(project / "data" / "spill.jsonl")  # a default, resolved too
    assert s.privacy.user_key_path == str(project / "data" / "user.key")
    assert s.routes["r"].template == str(project / "seed.md")


def test_absolute_and_memory_store_urls_are_kept(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\nurl = "sqlite:////var/tmp/x.db"\nspill_path = "/var/tmp/s.jsonl"\n')
    s = load_settings(cfg)
    assert (s.store.url, s.store.spill_path) == ("sqlite:////var/tmp/x.db", "/var/tmp/s.jsonl")
    cfg.write_text('[store]\nurl = "sqlite://:memory:"\n')
    assert load_settings(cfg).store.url == "sqlite://:memory:"


@pytest.mark.parametrize("command", [
    ["prompts", "log", "r"], ["prompts", "diff", "r"], ["routes", "report", "r"], ["export", "--route", "r"],
    ["forget", "--user", "u1"], ["learn", "r"], ["rollback", "r"],
])
def test_read_only_commands_refuse_to_create_a_database(project: Path, command: list[str]) -> None:
    got = flywheel(*command, "--config", "../proj/config.toml", cwd=project.parent / "elsewhere")
    assert got.returncode == 2, got.stderr
    assert f"no database at {project / 'data' / 'f.db'}" in got.stderr
    assert not (project / "data").exists() and not (project.parent / "elsewhere" / "data").exists()


def test_from_another_directory_the_cli_reads_the_gateways_store(project: Path) -> None:
    async def make() -> None:
        store = open_store(f"sqlite:///{project}/data/f.db")
        await store.migrate()
        await store.close()

    (project / "data").mkdir()
    asyncio.run(make())
    got = flywheel("--config", str(project / "config.toml"), "prompts", "log", "r", cwd=project.parent / "elsewhere")
    assert got.returncode == 0, got.stderr
    assert "no artifacts for route r yet" in got.stdout
    assert not (project.parent / "elsewhere" / "data").exists()
