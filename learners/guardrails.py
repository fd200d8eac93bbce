"""Checks every candidate passes before it may serve traffic; a failure is recorded as `rejected`.

- no PII in anything learned (instructions, demonstrations, examples), by `Scrubber.find`, and no
  redaction placeholders (an example teaching the model to say `<EMAIL>` is no good either);
- size limits: the template text within `max_template_chars`, the index within `max_examples`;
- provenance: a producer, and evidence (calls and feedback) behind every learned part;
- a template must compile and render in the sandbox with the standard variables.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from gateway.serve.templating import Template, TemplateError, check_template
from gateway.store.artifacts import Manifest
from retrieval.examples import Example

if TYPE_CHECKING:
    from gateway.privacy.scrubber import Scrubber

_PLACEHOLDER = re.compile(r"<(?:EMAIL|PHONE|CARD|IBAN|IP|SSN|PERSON)>")


def pii_problems(texts: Sequence[tuple[str, str]], scrubber: Scrubber | None,
                 keep: Collection[str] = ()) -> list[str]:
    """`what: PII types` for every (label, text) holding PII (of a type the route does not keep,
    `retrieval.keep_entities`) or a redaction placeholder."""
    problems: list[str] = []
    for label, text in texts:
        found = scrubber.find(text) if scrubber is not None else []
        types: list[str] = sorted({f.type for f in found if f.type not in keep})
        if _PLACEHOLDER.search(text):
            types.append("redacted text")
        if types:
            problems.append(f"PII in {label}: {', '.join(types)}")
    return problems


def _provenance(manifest: Manifest, learned: bool) -> list[str]:
    problems = []
    if not manifest.produced_by:
        problems.append("no provenance: produced_by is empty")
    if learned and not (manifest.evidence_call_ids or manifest.evidence_feedback_ids):
        problems.append("no provenance: learned content without evidence calls or feedback")
    return problems


def check_template_candidate(template: Template, manifest: Manifest, *, route: str, max_chars: int,
                             scrubber: Scrubber | None, keep: Collection[str] = ()) -> list[str]:
    """Every reason `template` may not go live (empty when it may)."""
    problems: list[str] = []
    if len(template.text()) > max_chars:
        problems.append(f"template is {len(template.text())} characters, limit {max_chars}")
    texts = [(f"instruction {i + 1}", t) for i, t in enumerate(template.instructions)]
    for i, d in enumerate(template.demonstrations):
        texts += [(f"demonstration {i + 1} input", d.input), (f"demonstration {i + 1} output", d.output)]
    problems += pii_problems(texts, scrubber, keep)
    problems += _provenance(manifest, bool(template.instructions or template.demonstrations))
    try:
        check_template(template, route)
    except TemplateError as exc:
        problems.append(str(exc))
    return problems


def check_index_candidate(examples: Sequence[Example], manifest: Manifest, *, max_examples: int,
                          scrubber: Scrubber | None, keep: Collection[str] = ()) -> list[str]:
    """Every reason an example index may not go live (empty when it may)."""
    problems: list[str] = []
    if len(examples) > max_examples:
        problems.append(f"index holds {len(examples)} examples, limit {max_examples}")
    texts = [(f"example {e.id} {part}", text) for e in examples for part, text in
             (("input", e.input), ("output", e.output))]
    problems += pii_problems(texts, scrubber, keep)
    problems += [f"no provenance: example {e.id} has no source call" for e in examples if not e.source_call_id]
    problems += _provenance(manifest, bool(examples))
    return problems
