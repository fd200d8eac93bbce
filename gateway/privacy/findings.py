"""A `Finding` (one PII span in a text), and the two operations on lists of them: resolving
overlaps between detectors and replacing the spans by typed placeholders."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

PiiType = Literal["EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "PERSON"]

# When two detectors claim overlapping text, the more specific, checksum- or syntax-validated type
# wins: a card number is also a digit run a phone matcher may take, an email holds a person's name.
# A US SSN (123-45-6789) is also a digit run a phone matcher may take: the SSN shape is the more specific.
_PRIORITY: dict[PiiType, int] = {"EMAIL": 0, "IBAN": 1, "CARD": 2, "IP": 3, "SSN": 4, "PHONE": 5, "PERSON": 6}


@dataclass(frozen=True, slots=True)
class Finding:
    """One PII span: `text[start:end]` is of kind `type`."""

    type: PiiType
    start: int
    end: int


def resolve_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """Keep a non-overlapping subset, preferring the higher-priority type, then the longer span.

    Returned sorted by start.
    """
    ranked = sorted(findings, key=lambda f: (_PRIORITY[f.type], f.start - f.end, f.start))
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept


def redact(text: str, findings: list[Finding], names: Callable[[str], str] | None = None) -> str:
    """Replace each (non-overlapping, start-sorted) finding by `<TYPE>`, or a person name by
    `names(name)` when given (consistent pseudonyms, gateway/privacy/pseudonym.py)."""
    if not findings:
        return text
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(names(text[f.start : f.end]) if names is not None and f.type == "PERSON" else f"<{f.type}>")
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)
