"""Phone numbers, international (+CC / 00CC) and national, validated by Google's libphonenumber port.

`phonenumbers.PhoneNumberMatcher` was measured here at ~30 ms per KB of digit-rich text: far too slow
for a scrubber that sees every call. So a cheap regex proposes candidates (7-17 digits with the
usual separators, inside the digit runs the scrubber found once for all number-shaped detectors)
and only those are parsed and validated, ~0.1 ms each.
Dates and decimals are rejected before parsing: libphonenumber accepts e.g. `2024-05-01` as a
valid German number. A national candidate is parsed for a region only if it is written as that
region writes its numbers: with its trunk prefix where that is 0 (GB, DE, FR: "030 1234567", never
"30 1234567"), and with one of its possible lengths. libphonenumber itself takes the digits without
the 0, so an order number like 123456789 was a valid French number (01 23 45 67 89), and every
number-shaped token that fails in the US was parsed for each other region (~100 us per token).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.privacy.findings import Finding
from gateway.privacy.patterns import Run, digit_runs

_CANDIDATE = re.compile(r"(?<![\w+#/.,-])(?:\+|00)?\(?\d[\d \t().\-/]{5,22}\d(?![\w-]|[.,]\d)")
# Dates anywhere in a candidate ("2005-01-26 23" is a date and an hour), and plain decimals.
_NOT_A_PHONE = re.compile(
    r"(?<!\d)(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?!\d)|^\d+\.\d+$"
)
_NON_DIGIT = re.compile(r"\D")

DEFAULT_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR")


class PhoneDetector:
    """Finds phone numbers; national formats are tried against `regions` in order."""

    def __init__(self, regions: Sequence[str] = DEFAULT_REGIONS) -> None:
        """`regions`: ISO 3166 alpha-2 codes whose national formats count (international always do)."""
        # Imported here so that importing the privacy package stays cheap.
        import phonenumbers

        self._pn = phonenumbers
        self._regions = tuple(r.upper() for r in regions)
        self._national: dict[str, tuple[str | None, frozenset[int]]] = {}
        for region in self._regions:
            meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
            if meta is None or meta.general_desc is None:
                raise ValueError(f"unknown phone region {region!r}")
            self._national[region] = (meta.national_prefix, frozenset(meta.general_desc.possible_length))

    def find(self, text: str, runs: list[Run] | None = None) -> list[Finding]:
        """Phone-number spans in `text`; `runs` are its `digit_runs` when the caller has them."""
        out: list[Finding] = []
        for run in digit_runs(text) if runs is None else runs:
            if run.digits < 7:
                continue
            # A leading "+" or "(" is not part of the digit run.
            start = run.start - 1 if run.start > 0 and text[run.start - 1] in "+(" else run.start
            for m in _CANDIDATE.finditer(text, start, run.end + 2):
                raw = m.group()
                digits = _NON_DIGIT.sub("", raw)
                if not 7 <= len(digits) <= 17 or _NOT_A_PHONE.search(raw.strip("()")):
                    continue
                if self._valid(raw, digits):
                    out.append(Finding("PHONE", m.start(), m.end()))
        return out

    def _valid(self, raw: str, digits: str) -> bool:
        if raw.startswith("+") or raw.startswith("00"):
            number = "+" + raw[2:] if raw.startswith("00") else raw
            return self._parses_valid(number, None)
        return any(self._parses_valid(raw, region) for region in self._regions if self._written_as(digits, region))

    def _written_as(self, digits: str, region: str) -> bool:
        """Whether `digits` has the shape of a national number of `region` as people write it."""
        prefix, lengths = self._national[region]
        if prefix == "0":  # a trunk prefix of 0 is always written in the national format
            return digits.startswith("0") and len(digits) - 1 in lengths
        if prefix and digits.startswith(prefix) and len(digits) - len(prefix) in lengths:
            return True  # NANP's optional 1
        return len(digits) in lengths

    def _parses_valid(self, raw: str, region: str | None) -> bool:
        pn = self._pn
        try:
            parsed = pn.parse(raw, region)
        except pn.NumberParseException:
            return False
        return bool(pn.is_valid_number(parsed))
