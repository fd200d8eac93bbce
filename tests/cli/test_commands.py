"""The `flywheel` commands: where --config may stand, exit codes and messages for unknown names,
check-config's full report, what export says it includes, serve's address, the default diff."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from flywheel.cli import main, parse
from flywheel.cli.serve import listen_address, redact_url
from gateway.config.settings import load_settings
from gateway.serve.templating import Template
from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry, Manifest
from gateway.store.records import CallRecord

CONFIG = """
[store]
url = "sqlite:///f.db"
[providers.p]
kind = "fake"
[models.m]
provider = "p"
name = "x"
[routes.r]
variants = ["m"]
[learners]
enabled = false
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)

    async def make() -> None:
        store = open_store(f"sqlite:///{tmp_path}/f.db")
        await store.migrate()
        await store.close()

    asyncio.run(make())
    return path


def test_config_is_accepted_before_or_after_the_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    assert parse(["--config", "a.toml", "prompts", "log", "r"]).config == "a.toml"
    assert parse(["prompts", "log", "r", "--config", "b.toml"]).config == "b.toml"
    assert parse(["export", "--config", "c.toml", "--route", "r"]).config == "c.toml"
    assert parse(["keys", "new", "k"]).config == "config.toml"
    monkeypatch.setenv("FLYWHEEL_CONFIG", "/etc/flywheel.toml")
    assert parse(["check-config"]).config == "/etc/flywheel.toml"
    assert parse(["check-config", "--config", "d.toml"]).config == "d.toml"


def test_prompts_log_of_an_unknown_route_exits_non_zero(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "log", "nope", "--config", str(config)]) == 2
    assert "unknown route 'nope' (routes in config: r)" in capsys.readouterr().err
    assert main(["prompts", "diff", "nope", "--config", str(config)]) == 2
    assert main(["prompts", "log", "r", "--config", str(config)]) == 0


def test_forget_of_an_unknown_user_exits_non_zero(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forget", "--user", "ghost", "--config", str(config)]) == 1
    assert "no calls or feedback of user 'ghost'" in capsys.readouterr().err

    async def add_call() -> None:
        store = open_store(load_settings(config).store.url)
        await store.migrate()
        await store.insert_calls([CallRecord(id="c1", route="r", variant="m", model="m", created_at=1.0, user="alice",
                                             status=200, request={"messages": []})])
        await store.close()

    asyncio.run(add_call())
    assert main(["forget", "--user", "alice", "--config", str(config)]) == 0
    assert "1 calls" in capsys.readouterr().out


def test_check_config_shows_missing_models_beside_schema_errors(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[server]\nport = "eighty"\n[providers.p]\nkind = "fake"\nbase_url = "http://x"\n'
                   '[models.m]\nprovider = "p"\nname = "x"\n[routes.r]\nvariants = ["m", "ghost"]\n'
                   'fallbacks = ["huge"]\n')
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "server.port:" in err
    assert "providers.p.base_url: unknown key" in err  # the fake provider has no base_url
    assert "routes.r.variants[1]: unknown model 'ghost'" in err
    assert "routes.r.fallbacks[0]: unknown model or variant 'huge'" in err


def test_export_says_what_it_includes(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["export", "--route", "r", "--out", str(out), "--config", str(config)]) == 0
    assert "unrated ones included" in capsys.readouterr().err
    assert main(["export", "--route", "r", "--min-rating", "1", "--out", str(out), "--config", str(config)]) == 0
    assert "exporting calls rated 1 or corrected" in capsys.readouterr().err


def test_serve_address_comes_from_flags_then_environment_then_config(config: Path) -> None:
    settings = load_settings(config)
    none = argparse.Namespace(host=None, port=None)
    assert listen_address(none, settings, {}) == ("127.0.0.1", 8080)
    env = {"FLYWHEEL_HOST": "0.0.0.0", "FLYWHEEL_PORT": "9000"}
    assert listen_address(none, settings, env) == ("0.0.0.0", 9000)
    assert listen_address(argparse.Namespace(host="::1", port=0), settings, env) == ("::1", 0)
    with pytest.raises(ValueError, match="FLYWHEEL_PORT"):
        listen_address(none, settings, {"FLYWHEEL_PORT": "eighty"})
    with pytest.raises(ValueError, match="65535"):
        listen_address(argparse.Namespace(host=None, port=70000), settings, {})
    assert redact_url("postgresql://fw:s3cret@db:5432/fw") == "postgresql://fw:***@db:5432/fw"


def test_serve_refuses_a_bad_port_from_the_environment(config: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLYWHEEL_PORT", "http")
    assert main(["serve", "--config", str(config)]) == 2
    assert "FLYWHEEL_PORT must be a port number" in capsys.readouterr().err


def test_prompts_diff_defaults_to_current_against_the_previous_promotion(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def history() -> None:
        store = open_store(load_settings(config).store.url)
        await store.migrate()
        reg = ArtifactRegistry(store)
        for version, text, end in (("t0", "Be kind.", "promoted"), ("t1", "Be brief.", "promoted"),
                                   ("t2", "Be rude.", "rejected")):
            await reg.save_candidate("r", "template", Template(text).to_body(),
                                     Manifest(produced_by="test", parent=None), version=version)
            await reg.move("r", "template", version, end, "test")
        await store.close()

    asyncio.run(history())
    assert main(["prompts", "diff", "r", "--config", str(config), "--width", "200"]) == 0
    out = capsys.readouterr().out
    assert "template t0 -> t1" in out and "+Be brief." in out and "rude" not in out
    assert main(["prompts", "diff", "r", "t2", "--config", str(config), "--width", "200"]) == 0
    assert "-> t2" in capsys.readouterr().out  # named versions are still shown as asked


def test_prompts_diff_without_a_promotion_says_so(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prompts", "diff", "r", "--config", str(config)]) == 1
    assert "no promoted template yet" in capsys.readouterr().err
