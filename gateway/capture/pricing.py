"""Fallback prices from litellm's bundled price map, read without importing litellm.

Configured prices (`[models.X] price`) come first and are applied on the request path
(`Target.cost`). When a model has none, the writer's prepare hook asks a `PriceMap`, which
reads `model_prices_and_context_window_backup.json` from the installed litellm package once,
on first use: importing litellm itself costs about a second and ~100 MB, the JSON ~50 ms.
Only the per-token input/output prices are kept.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

PRICE_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """USD per token, as litellm's map states it."""

    input: float
    output: float


def litellm_price_file() -> Path | None:
    """Where the installed litellm keeps its bundled price map, or None; litellm is not imported."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / PRICE_FILE
        if path.is_file():
            return path
    return None


def load_prices(path: Path) -> dict[str, TokenPrice]:
    """Model name -> per-token prices, from a litellm-format price map (entries without prices skipped)."""
    raw = orjson.loads(path.read_bytes())
    out: dict[str, TokenPrice] = {}
    if not isinstance(raw, dict):
        return out
    for name, entry in raw.items():
        if not isinstance(entry, dict) or name == "sample_spec":
            continue
        inp, outp = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if isinstance(inp, int | float) and not isinstance(inp, bool):
            out[name] = TokenPrice(float(inp), float(outp) if isinstance(outp, int | float) else 0.0)
    return out


class PriceMap:
    """Cost of a call from litellm's price map; loaded once, lazily, never on the request path."""

    def __init__(self, path: Path | None = None) -> None:
        """`path`: a price file in litellm's format; default: the one inside the installed litellm."""
        self._path = path
        self._prices: dict[str, TokenPrice] | None = None

    def _table(self) -> dict[str, TokenPrice]:
        if self._prices is None:
            path = self._path or litellm_price_file()
            try:
                self._prices = load_prices(path) if path is not None else {}
            except (OSError, orjson.JSONDecodeError) as e:
                log.warning("price map %s unreadable (%s): no fallback prices", path, e)
                self._prices = {}
        return self._prices

    def price(self, model: str) -> TokenPrice | None:
        """Prices for a provider model name: exact, else without a `provider/` prefix."""
        table = self._table()
        found = table.get(model)
        if found is None and "/" in model:
            found = table.get(model.split("/", 1)[1])
        return found

    def cost(self, model: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """USD for the tokens, or None when the model or the prompt token count is unknown."""
        if prompt_tokens is None:
            return None
        p = self.price(model)
        if p is None:
            return None
        return prompt_tokens * p.input + (completion_tokens or 0) * p.output
