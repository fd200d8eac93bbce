"""Validation against OpenAI's published OpenAPI spec (verbatim cuts, MIT licence, openai/openai-openapi 2.3.0):
openai_openapi_subset.yaml (chat, embeddings, models, errors) and openai_openapi_responses_completions.yaml
(responses, legacy completions; validate(..., spec=RESPONSES))."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).with_name("openai_openapi_subset.yaml")
RESPONSES = Path(__file__).with_name("openai_openapi_responses_completions.yaml")
URI = "urn:openai-openapi"


def _nullable(node: Any) -> Any:
    """Honour OpenAPI's `nullable: true` (which the spec still uses in places) as JSON Schema's null type."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _registry(spec_path: Path = SPEC) -> Registry:  # type: ignore[type-arg]
    spec = _nullable(yaml.safe_load(spec_path.read_text()))
    return Registry().with_resource(URI, Resource.from_contents(spec, default_specification=DRAFT202012))


def validate(schema_name: str, instance: Any, spec: Path = SPEC) -> None:
    """Raise jsonschema.ValidationError when `instance` does not match components.schemas[schema_name]."""
    validator = Draft202012Validator({"$ref": f"{URI}#/components/schemas/{schema_name}"},
                                     registry=_registry(spec))
    validator.validate(instance)
