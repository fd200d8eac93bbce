"""Name references checked on the raw config.toml document, for when the schema check failed.

`parse_settings` cross-checks names (a route's variants name models, a model names a provider…)
on the validated `Settings`; when some table is invalid there is no `Settings`, yet a missing model
is still worth reporting with the schema errors (`flywheel check-config` promises every problem).
Messages are the same as the full cross-check's.
"""

from __future__ import annotations

from typing import Any


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def reference_problems(data: dict[str, Any]) -> list[str]:
    """`key.path: message` for every name in the raw document that points at nothing."""
    providers, models, routes = _table(data, "providers"), _table(data, "models"), _table(data, "routes")
    problems: list[str] = []
    for name, m in models.items():
        provider = m.get("provider") if isinstance(m, dict) else None
        if isinstance(provider, str) and provider not in providers:
            problems.append(f"models.{name}.provider: unknown provider '{provider}'")
    for rname, r in routes.items():
        if not isinstance(r, dict):
            continue
        names: list[str] = []
        variants = r.get("variants")
        for i, v in enumerate(variants if isinstance(variants, list) else []):
            model = v if isinstance(v, str) else v.get("model") if isinstance(v, dict) else None
            if isinstance(model, str):
                names.append(v if isinstance(v, str) else str(v.get("name", model)))
                if model not in models:
                    problems.append(f"routes.{rname}.variants[{i}]: unknown model '{model}'")
        fallbacks = r.get("fallbacks")
        for i, fb in enumerate(fallbacks if isinstance(fallbacks, list) else []):
            if isinstance(fb, str) and fb not in names and fb not in models:
                problems.append(f"routes.{rname}.fallbacks[{i}]: unknown model or variant '{fb}'")
    return problems
