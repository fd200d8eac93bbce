"""The Dockerfile and docker-compose.yml agree with the CLI and the config schema (this machine
cannot pull images, so the files are checked, not run): commands parse as `flywheel` commands,
published ports reach the port the gateway listens on, environment variables are ones the
gateway reads, the mounted config.toml is valid and names the compose services it needs, and a
replica on 0.0.0.0 would not be refused for want of an admin key. Also: `flywheel serve` refuses
a non-loopback host without an admin key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from flywheel.cli import main, parse
from flywheel.cli.serve import exposure_problem, is_loopback
from gateway.config.settings import Settings, load_settings
from tests.conftest import base_config, write_toml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def gateways() -> dict[str, dict]:  # type: ignore[type-arg]
    return {name: s for name, s in compose()["services"].items() if name.startswith("gateway")}


def mounted_config(service: dict) -> Path:  # type: ignore[type-arg]
    cfg_arg = parse(service["command"][1:]).config
    for volume in service["volumes"]:
        host, container = volume.split(":")[:2]
        if container == cfg_arg:
            return ROOT / host
    raise AssertionError(f"{cfg_arg} is not mounted")


def test_compose_runs_two_gateway_replicas_with_commands_the_cli_accepts() -> None:
    services = gateways()
    assert len(services) == 2
    published = set()
    for service in services.values():
        command = service["command"]
        assert command[0] == "flywheel"
        args = parse(command[1:])
        assert args.command == "serve"
        host_port, container_port = service["ports"][0].split(":")
        assert int(container_port) == args.port  # what is published is what the gateway listens on
        published.add(host_port)
        settings = load_settings(mounted_config(service))
        assert settings.server.port == args.port
        env = service["environment"]
        # every variable is one the gateway reads: the admin key (the config's admin_key_env), the user key
        assert set(env) <= {settings.auth.admin_key_env, settings.privacy.user_key_env, "FLYWHEEL_HOST",
                            "FLYWHEEL_PORT"}
        assert settings.auth.admin_key_env in env
        assert exposure_problem(args.host, settings, {k: "set" for k in env}, args.insecure_open) is None
        assert not is_loopback(args.host)
    assert len(published) == 2  # the replicas do not collide on the host


def test_compose_config_names_the_postgres_and_redis_services() -> None:
    services = compose()["services"]
    settings = load_settings(mounted_config(next(iter(gateways().values()))))
    store, redis_url = urlsplit(settings.store.url), urlsplit(settings.limits.redis_url or "")
    assert store.scheme.startswith("postgres") and store.hostname in services
    pg = services[store.hostname]
    assert pg["environment"]["POSTGRES_DB"] == store.path.lstrip("/")
    assert pg["environment"]["POSTGRES_USER"] == store.username
    assert (store.port or 5432) == 5432
    assert redis_url.scheme == "redis" and redis_url.hostname in services
    redis_cmd = services[redis_url.hostname]["command"]
    assert redis_cmd[redis_cmd.index("--port") + 1] == str(redis_url.port)
    for service in gateways().values():
        assert set(service["depends_on"]) == {store.hostname, redis_url.hostname}


def test_replicas_share_the_journal_folder_and_the_user_key() -> None:
    """A survivor replays a killed sibling's writer journal only from the same folder, with the
    same user key (journal records are encrypted with a key derived from it)."""
    services = gateways()
    journals, keys = set(), set()
    for service in services.values():
        settings = load_settings(mounted_config(service))
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert settings.store.journal_dir in mounts, "the journal folder is not a mounted volume"
        source = mounts[settings.store.journal_dir]
        assert source in compose()["volumes"], "the journal must be a named volume, shared by the replicas"
        journals.add(source)
        assert settings.privacy.user_key_env in service["environment"]
        keys.add(service["environment"][settings.privacy.user_key_env])
    assert len(journals) == 1 and len(keys) == 1

def test_dockerfile_cmd_and_port_match_the_cli_and_compose() -> None:
    text = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    exposed = int(re.search(r"^EXPOSE (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    args = parse(cmd[1:])
    assert cmd[0] == "flywheel" and args.command == "serve" and args.port == exposed
    for service in gateways().values():
        assert service["command"] == cmd
    for package in ("gateway", "policies", "retrieval", "learners", "flywheel"):  # what pyproject packages
        assert f"COPY {package} ./{package}" in text


def test_serve_refuses_a_non_loopback_host_without_an_admin_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FLYWHEEL_ADMIN_KEY", raising=False)
    path = write_toml(base_config("http://127.0.0.1:9/v1", tmp_path), tmp_path / "config.toml")
    assert main(["--config", str(path), "serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    settings = Settings()
    assert exposure_problem("0.0.0.0", settings, {}, insecure_open=False) is not None
    assert exposure_problem("0.0.0.0", settings, {}, insecure_open=True) is None  # --insecure-open
    assert exposure_problem("0.0.0.0", settings, {"FLYWHEEL_ADMIN_KEY": "k"}, insecure_open=False) is None
    assert exposure_problem("127.0.0.1", settings, {}, insecure_open=False) is None
    assert exposure_problem("::1", settings, {}, insecure_open=False) is None
    open_cfg = Settings.model_validate({"server": {"insecure_open": True}})
    assert exposure_problem("10.0.0.5", open_cfg, {}, insecure_open=False) is None  # the config flag
