"""config.toml always wins, at once, through a real gateway watching its config file; what the
learned policy has learned survives the reload."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from policies import LearnedPolicy
from tests.conftest import fetch_call
from tests.routing.conftest import routing_config, wait_for, write_config
from tests.routing.test_request_path import EASY_PRIORS, chat, feedback, live, routing


def trained_gateway(make_gateway: Any, tmp_path: Path) -> tuple[Any, Path, dict[str, Any]]:
    """A gateway on a watched config.toml whose learned policy took 5 updates."""
    cfg = routing_config(tmp_path, prior_quality=EASY_PRIORS)
    path = tmp_path / "config.toml"
    write_config(path, cfg)
    gw = make_gateway(cfg, path)
    for i in range(5):
        r = chat(gw, "smart", f"What are the opening hours of shop {i}?", user="bob")
        feedback(gw, r.headers["x-flywheel-call-id"], rating=1)
    wait_for(lambda: live(gw).updates == 5, what="5 online updates")
    return gw, path, cfg


def reload_with(gw: Any, path: Path, cfg: dict[str, Any]) -> LearnedPolicy:
    old = live(gw)
    write_config(path, cfg)
    wait_for(lambda: live(gw) is not old, what="the config reload")
    return live(gw)


def test_a_pin_in_config_overrides_the_learned_policy_at_once(make_gateway: Any, tmp_path: Path) -> None:
    gw, path, cfg = trained_gateway(make_gateway, tmp_path)
    assert chat(gw, "smart", "Opening hours on Sunday?", user="alice").headers["x-flywheel-variant"] == "cheap"
    probe = routing(gw)._memory[chat(gw, "smart", "Opening hours today?", user="bob").headers[
        "x-flywheel-call-id"]].features
    learned_before = live(gw).predict(probe)

    pinned = copy.deepcopy(cfg)
    pinned["routes"]["smart"]["policy"]["pins"] = [{"variant": "strong", "user": "alice"}]
    policy = reload_with(gw, path, pinned)

    r = chat(gw, "smart", "Opening hours on Sunday?", user="alice")
    assert r.headers["x-flywheel-variant"] == "strong"
    rec = fetch_call(gw, r.headers["x-flywheel-call-id"])
    assert rec.policy_reason == "pinned by config: user=alice → strong" and rec.choice_probability == 1.0
    assert chat(gw, "smart", "Opening hours on Sunday?", user="bob").headers["x-flywheel-variant"] == "cheap"
    assert policy.updates == 5 and policy.predict(probe) == learned_before, "learned state carried over"

    reload_with(gw, path, cfg)  # the pin removed: alice goes back to the learned choice
    assert chat(gw, "smart", "Opening hours on Sunday?", user="alice").headers["x-flywheel-variant"] == "cheap"


def test_key_and_segment_pins_and_freezing_by_reload(make_gateway: Any, tmp_path: Path) -> None:
    gw, path, cfg = trained_gateway(make_gateway, tmp_path)
    changed = copy.deepcopy(cfg)
    changed["routes"]["smart"]["policy"]["pins"] = [{"variant": "strong", "min_prompt_chars": 40}]
    changed["routes"]["smart"]["learn"] = False
    policy = reload_with(gw, path, changed)
    long_text = "Opening hours of the shop near the central station, please?"
    assert chat(gw, "smart", long_text, user="bob").headers["x-flywheel-variant"] == "strong"
    r = chat(gw, "smart", "Opening hours?", user="bob")
    assert r.headers["x-flywheel-variant"] == "cheap"
    ignored = routing(gw).stats.ignored  # inferred "rephrased" rows say nothing under "rating"
    feedback(gw, r.headers["x-flywheel-call-id"], rating=-1)
    wait_for(lambda: routing(gw).stats.ignored > ignored, what="the frozen policy to refuse the update")
    assert policy.frozen and policy.updates == 5


def test_an_invalid_pin_is_refused_and_the_running_config_stays(make_gateway: Any, tmp_path: Path) -> None:
    gw, path, cfg = trained_gateway(make_gateway, tmp_path)
    before = live(gw)
    bad = copy.deepcopy(cfg)
    bad["routes"]["smart"]["policy"]["pins"] = [{"variant": "huge", "user": "alice"}]
    write_config(path, bad)
    wait_for(lambda: gw.gateway.last_reload_error is not None, what="the refused reload")
    assert "routes.smart.policy" in gw.gateway.last_reload_error and "huge" in gw.gateway.last_reload_error
    assert live(gw) is before
