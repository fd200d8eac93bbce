"""config.toml is strict, cross-checked, names the key of every problem, and reloads live."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.cli import main
from gateway.config.settings import ConfigError, load_settings, parse_settings

GOOD = """
[providers.up]
kind = "openai"
base_url = "{upstream}"

[models.small]
provider = "up"
name = "a"
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.6 }}

[routes.bot]
variants = ["small"]

[store]
url = "sqlite:///{tmp}/f.db"
spill_path = "{tmp}/spill.jsonl"

[learners]
enabled = false

[server]
reload_interval_s = 0.05
"""


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_settings(data)
    return exc.value.problems


def test_the_shipped_config_is_valid() -> None:
    settings = load_settings(Path(__file__).parents[2] / "config.toml")
    assert "support-bot" in settings.routes


def test_unknown_keys_are_errors_naming_the_path() -> None:
    got = problems({"providers": {"p": {"kind": "fake", "latency": 3}}, "servr": {}})
    assert "providers.p.latency: unknown key" in got
    assert "servr: unknown key" in got


def test_cross_checks_name_every_problem_at_once() -> None:
    got = problems({
        "providers": {"p": {"kind": "fake"}},
        "models": {"m": {"provider": "nope", "name": "x"}},
        "routes": {"r": {"variants": ["m", "ghost"], "fallbacks": ["huge"],
                         "policy": {"kind": "weighted", "weights": {"other": 1}}}},
        "auth": {"keys": {"k": {"hash": "sha256:" + "0" * 64, "routes": ["missing"]}}},
    })
    assert got == sorted([
        "auth.keys.k.routes[0]: unknown route 'missing'",
        "models.m.provider: unknown provider 'nope'",
        "routes.r.fallbacks[0]: unknown model or variant 'huge'",
        "routes.r.policy.weights.other: not a variant of this route",
        "routes.r.variants[1]: unknown model 'ghost'",
    ])


def test_negative_prices_and_bad_values_name_the_key() -> None:
    got = problems({"providers": {"p": {"kind": "fake"}},
                    "models": {"m": {"provider": "p", "name": "x", "price": {"input_per_mtok": -1}}}})
    assert any(p.startswith("models.m.price.input_per_mtok:") for p in got)
    got = problems({"providers": {"p": {"kind": "openai"}}})
    assert got == ["providers.p.base_url: required for kind 'openai'"]
    got = problems({"auth": {"keys": {"k": {"hash": "plaintext-key"}}}})
    assert got[0].startswith("auth.keys.k.hash:")


def test_check_config_prints_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('[models.m]\nprovider = "nope"\nname = "x"\n[routes.r]\nvariants = ["zzz"]\n')
    assert main(["--config", str(bad), "check-config"]) == 1
    err = capsys.readouterr().err
    assert "models.m.provider: unknown provider 'nope'" in err
    assert "routes.r.variants[0]: unknown model 'zzz'" in err
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("[server\n")
    assert main(["--config", str(syntax), "check-config"]) == 1
    assert "TOML syntax" in capsys.readouterr().err


def _wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_config_changes_apply_without_restart_and_bad_ones_are_refused(
    make_gateway: Any, fake_upstream: str, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(GOOD.format(upstream=fake_upstream, tmp=tmp_path))
    gw = make_gateway(load_settings(path).model_dump(), config_path=path)

    def models() -> list[str]:
        return [m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]]

    assert models() == ["bot", "small"]
    path.write_text(GOOD.format(upstream=fake_upstream, tmp=tmp_path) + '\n[routes.bot2]\nvariants = ["small"]\n')
    _wait_for(lambda: "bot2" in models())
    path.write_text(GOOD.format(upstream=fake_upstream, tmp=tmp_path) + '\n[routes.bot3]\nvariants = ["nope"]\n')
    _wait_for(lambda: gw.gateway.last_reload_error is not None)
    assert "routes.bot3.variants[0]: unknown model 'nope'" in gw.gateway.last_reload_error
    assert models() == ["bot", "bot2", "small"], "the last valid config stays in force"
    r = httpx.post(gw.v1 + "/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200


def test_template_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "seed.md").write_text("Be kind.")
    path = tmp_path / "config.toml"
    path.write_text('[providers.p]\nkind = "fake"\n[models.m]\nprovider = "p"\nname = "x"\n'
                    '[routes.r]\nvariants = ["m"]\ntemplate = "t/seed.md"\n')
    assert load_settings(path).routes["r"].template == str(tmp_path / "t" / "seed.md")
