"""Cost: configured prices first, litellm's bundled price map second (read without importing litellm)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.capture.pricing import PriceMap, TokenPrice, litellm_price_file, load_prices
from tests.capture.conftest import REPO
from tests.conftest import base_config, fetch_call


def test_the_price_file_is_found_and_litellm_is_not_imported() -> None:
    code = ("import sys; from gateway.capture.pricing import PriceMap; c = PriceMap().cost('gpt-4o-mini', 1000, 100); "
            "print(c, 'litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cost, imported = out.stdout.split()
    assert float(cost) > 0 and imported == "False"


def test_price_lookup(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(orjson.dumps({
        "sample_spec": {"input_cost_per_token": 0.0},
        "m1": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
        "m2": {"mode": "image_generation"},  # no token prices: skipped
    }))
    assert load_prices(path) == {"m1": TokenPrice(1e-6, 2e-6)}
    prices = PriceMap(path)
    assert prices.cost("m1", 1000, 500) == pytest.approx(0.002)
    assert prices.cost("openai/m1", 1000, None) == pytest.approx(0.001)  # provider prefix dropped
    assert prices.cost("m1", None, 5) is None
    assert prices.cost("unknown", 10, 10) is None
    assert PriceMap(tmp_path / "missing.json").cost("m1", 1, 1) is None  # unreadable: no fallback, no crash


def test_gateway_prices_unpriced_models_from_litellms_map(make_gateway: Any, fake_upstream: str,
                                                          tmp_path: Path) -> None:
    path = litellm_price_file()
    assert path is not None
    ref = load_prices(path)["gpt-4o-mini"]
    cfg = base_config(fake_upstream, tmp_path)
    cfg["models"]["mini"] = {"provider": "up", "name": "gpt-4o-mini"}  # no configured price
    cfg["models"]["odd"] = {"provider": "up", "name": "no-such-model-anywhere"}
    cfg["routes"] = {"cheap": {"variants": ["mini"]}, "priced": {"variants": ["model-a"]},
                     "unknown": {"variants": ["odd"]}}
    gw = make_gateway(cfg)

    def call(route: str) -> Any:
        r = httpx.post(gw.v1 + "/chat/completions", json={"model": route, "messages": [
            {"role": "user", "content": "how much does this cost, roughly, in dollars?"}]})
        assert r.status_code == 200, r.text
        return fetch_call(gw, r.headers["x-flywheel-call-id"])

    mini = call("cheap")
    assert mini.prompt_tokens and mini.completion_tokens
    assert mini.cost_usd == pytest.approx(mini.prompt_tokens * ref.input + mini.completion_tokens * ref.output)
    priced = call("priced")  # a configured price wins: model-a costs 1 / 2 USD per million tokens
    assert priced.cost_usd == pytest.approx((priced.prompt_tokens * 1.0 + priced.completion_tokens * 2.0) / 1e6)
    assert call("unknown").cost_usd is None
