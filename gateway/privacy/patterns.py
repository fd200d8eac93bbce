"""Pattern detectors validated by syntax or checksum: emails, payment cards (Luhn), IBANs (ISO 13616
mod-97), IP addresses (the stdlib `ipaddress` parser) and US social security numbers (the SSA's
area/group/serial rules).

Each `find_*` function is pure and cheap. Most strings on the capture path hold no PII, and a regex
that does not start with a literal is tried at every position of the text (~30-80 µs per KB each
here). So the text is scanned once for runs of digits (`digit_runs`), and the number-shaped
detectors (cards, IBANs, IPv4, phones) only run their patterns inside runs long enough to matter.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from gateway.privacy.findings import Finding

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?!\w)"
)
# 13-19 digits, optionally grouped by single spaces or dashes (4-4-4-4, 4-6-5 for Amex, ...).
_CARD = re.compile(r"(?<![\d.,#+-])\d(?:[ -]?\d){12,18}(?![\d-]|[.,]\d)")
# Country code, check digits, then 11-30 alphanumerics, optionally grouped by spaces (paper format).
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# A loose IPv6 shape; `ipaddress` decides. Needs at least two colons to skip clock times like 12:30.
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
# AAA-GG-SSSS, dashes required: nine bare digits are as often an order number as an SSN.
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_RUN = re.compile(r"[0-9][0-9 \t().\-/]*[0-9]")
_NON_DIGIT = re.compile(r"[^0-9]")
# Two colons close together: every IPv6 address has them, prose rarely does. Literal-led, so fast.
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
# "version 1.2.3.4" / "v1.2.3.4" is a version, not an address.
_VERSION_BEFORE = re.compile(r"\b(?:v|version\s*|ver\.?\s*)$", re.IGNORECASE)


class Run(NamedTuple):
    """A run of digits and separators, `text[start:end]`, holding `digits` digits."""

    start: int
    end: int
    digits: int


def digit_runs(text: str) -> list[Run]:
    """Runs of digits, possibly separated by spaces, dots, dashes, slashes, parentheses, that are
    long enough (or placed right) to hold a card, phone, IPv4 address or IBAN."""
    out: list[Run] = []
    for m in _RUN.finditer(text):
        start, end = m.span()
        # Every detector needs 7+ characters, except the IBAN's check digits after the country code.
        if end - start < 7 and not (start >= 2 and text[start - 2 : start].isupper()):
            continue
        run = m.group()
        out.append(Run(start, end, end - start if run.isdigit() else len(_NON_DIGIT.sub("", run))))
    return out


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether a compact IBAN (no spaces, upper case) passes the ISO 13616 mod-97 check."""
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    # Letters count as two-digit numbers A=10 .. Z=35; int(ch, 36) does exactly that.
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def find_emails(text: str) -> list[Finding]:
    """Email addresses."""
    if "@" not in text:
        return []
    return [Finding("EMAIL", m.start(), m.end()) for m in _EMAIL.finditer(text)]


def find_cards(text: str, runs: list[Run] | None = None) -> list[Finding]:
    """Payment card numbers (13-19 digits, Luhn-valid, not all one digit)."""
    out: list[Finding] = []
    for run in digit_runs(text) if runs is None else runs:
        if run.digits < 13:
            continue
        for m in _CARD.finditer(text, run.start, run.end + 2):
            digits = m.group().replace(" ", "").replace("-", "")
            # Payment networks' IINs start with 2-6; 0/1/7/8/9 are phone numbers, ids, accounts.
            if digits[0] in "23456" and len(set(digits)) > 1 and luhn_valid(digits):
                out.append(Finding("CARD", m.start(), m.end()))
    return out


def find_ibans(text: str, runs: list[Run] | None = None) -> list[Finding]:
    """IBANs in compact or space-grouped form, checksum-validated."""
    out: list[Finding] = []
    for run in digit_runs(text) if runs is None else runs:
        # The run starts at the check digits, right after the two-letter country code.
        if run.start < 2 or not text[run.start - 2 : run.start].isupper():
            continue
        m = _IBAN.match(text, run.start - 2)
        if m is None:
            continue
        raw = m.group()
        if iban_valid(raw.replace(" ", "")):
            out.append(Finding("IBAN", m.start(), m.end()))
            continue
        # The grouped form can swallow a following all-caps word ("... 3000 NOW"): retry shorter.
        end = len(raw)
        while " " in raw[:end]:
            end = raw.rindex(" ", 0, end)
            if iban_valid(raw[:end].replace(" ", "")):
                out.append(Finding("IBAN", m.start(), m.start() + end))
                break
    return out


def find_ips(text: str, runs: list[Run] | None = None) -> list[Finding]:
    """IPv4 and IPv6 addresses that the stdlib parser accepts (versions like v1.2.3.4 excepted)."""
    out: list[Finding] = []
    for run in digit_runs(text) if runs is None else runs:
        if run.digits < 4 or text.count(".", run.start, run.end) < 3:
            continue
        for m in _IPV4.finditer(text, run.start, run.end + 2):
            if _VERSION_BEFORE.search(text, max(0, m.start() - 9), m.start()):
                continue
            if _parses(m.group()):
                out.append(Finding("IP", m.start(), m.end()))
    if ":" in text and _IPV6_HINT.search(text):
        for m in _IPV6.finditer(text):
            s = m.group()
            if len(s) > 2 and any(c not in ":" for c in s) and _parses(s):
                out.append(Finding("IP", m.start(), m.end()))
    return out


def find_ssns(text: str, runs: list[Run] | None = None) -> list[Finding]:
    """US social security numbers written AAA-GG-SSSS that the SSA could have issued (area not 000,
    666 or 9xx; group not 00; serial not 0000)."""
    out: list[Finding] = []
    for run in digit_runs(text) if runs is None else runs:
        if run.digits != 9 or text.count("-", run.start, run.end) != 2:
            continue
        for m in _SSN.finditer(text, run.start, run.end):
            area, group, serial = m.groups()
            if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
                continue
            out.append(Finding("SSN", m.start(), m.end()))
    return out


def _parses(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True
