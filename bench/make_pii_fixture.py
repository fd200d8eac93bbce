"""Generate tests/fixtures/pii_prompts.jsonl: seeded, PII-laden prompts with every planted span.

    python bench/make_pii_fixture.py [--n 200] [--seed 7] [--out tests/fixtures/pii_prompts.jsonl]

Each line: {"id", "text", "pii": [{"type", "value", "start", "end", "cue", "locale"}], "keep": [...]}.
`keep` lists non-PII strings planted alongside (prices, dates, order ids, versions) that a scrubber
must leave intact. For names, `cue` says whether a context cue ("my name is", "Dear", ...) precedes
the name and `locale` which faker locale it comes from; some locales are outside the scrubber's
default name lists on purpose, so that recall is not measured only on the lists it ships with.
Phone numbers are random digit strings that libphonenumber accepts, formatted as people write them.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from faker import Faker

LISTED_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR")
OTHER_LOCALES = ("en_AU", "hr_HR", "sk_SK", "lt_LT", "sl_SI", "fr_CA")
IBAN_LOCALES = ("de_DE", "fr_FR", "nl_NL", "en_GB", "es_ES", "it_IT")
PHONE_REGIONS = ("US", "GB", "DE", "FR")  # national formats; others are written internationally
INTL_REGIONS = ("IT", "ES", "NL", "IN", "BR", "JP", "AU", "CH")


@dataclass
class Span:
    type: str
    value: str
    start: int = 0
    end: int = 0
    cue: bool = False
    locale: str = ""


class Generator:
    """Builds prompts from templates; every random choice comes from one seeded `random.Random`."""

    def __init__(self, seed: int) -> None:
        import phonenumbers

        self.pn = phonenumbers
        self.rng = random.Random(seed)
        Faker.seed(seed)
        self.fake = Faker(list(dict.fromkeys(LISTED_LOCALES + OTHER_LOCALES + IBAN_LOCALES)))

    # --- PII values ---------------------------------------------------------------------------
    def name(self, cue: bool) -> Span:
        pool = OTHER_LOCALES if self.rng.random() < 0.25 else LISTED_LOCALES
        locale = self.rng.choice(pool)
        f = self.fake[locale]
        return Span("PERSON", f"{f.first_name()} {f.last_name()}", cue=cue, locale=locale)

    def email(self) -> Span:
        f = self.fake[self.rng.choice(LISTED_LOCALES)]
        return Span("EMAIL", self.rng.choice([f.email, f.free_email, f.company_email])())

    def phone(self) -> Span:
        pn = self.pn
        national = self.rng.random() < 0.6
        region = self.rng.choice(PHONE_REGIONS if national else PHONE_REGIONS + INTL_REGIONS)
        # As long as the region's example mobile or fixed-line number: realistic, unlike the longest
        # length the metadata allows.
        kind = self.rng.choice([pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.FIXED_LINE])
        example = pn.example_number_for_type(region, kind) or pn.example_number(region)
        length = len(str(example.national_number))
        while True:
            digits = "".join(self.rng.choice("0123456789") for _ in range(length))
            number = pn.parse("+" + str(pn.country_code_for_region(region)) + digits, None)
            if pn.is_valid_number(number):
                break
        if national:
            text = pn.format_number(number, pn.PhoneNumberFormat.NATIONAL)
            if region == "US":
                n = str(number.national_number)
                text = self.rng.choice([text, f"{n[:3]}-{n[3:6]}-{n[6:]}", f"{n[:3]}.{n[3:6]}.{n[6:]}"])
        else:
            fmt = self.rng.choice([pn.PhoneNumberFormat.INTERNATIONAL, pn.PhoneNumberFormat.E164])
            text = pn.format_number(number, fmt)
            if self.rng.random() < 0.2:
                text = "00" + text[1:]
        return Span("PHONE", text)

    def card(self) -> Span:
        kind = self.rng.choice(["visa16", "mastercard", "amex", "discover", "visa13"])
        digits = self.fake["en_US"].credit_card_number(kind)
        style = self.rng.choice(["plain", "space", "dash"])
        if style != "plain" and len(digits) == 16:
            sep = " " if style == "space" else "-"
            digits = sep.join(digits[i : i + 4] for i in range(0, 16, 4))
        elif style != "plain" and len(digits) == 15:
            digits = f"{digits[:4]} {digits[4:10]} {digits[10:]}"
        return Span("CARD", digits)

    def iban(self) -> Span:
        raw = self.fake[self.rng.choice(IBAN_LOCALES)].iban()
        if self.rng.random() < 0.5:
            raw = " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))
        return Span("IBAN", raw)

    def ip(self) -> Span:
        f = self.fake["en_US"]
        return Span("IP", self.rng.choice([f.ipv4_public, f.ipv4_private, f.ipv6])())

    # --- non-PII that must survive ---------------------------------------------------------------
    def keep(self) -> str:
        r = self.rng
        return r.choice(
            [
                f"${r.randint(1, 9)},{r.randint(100, 999)}.{r.randint(10, 99)}",
                f"€{r.randint(5, 500)}.{r.randint(10, 99)}",
                f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/2025",
                f"#{r.randint(10000, 99999999)}",
                f"{r.randint(1, 3)}.{r.randint(0, 13)}.{r.randint(0, 30)}",
                f"v{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
                f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
                f"{r.randint(2, 95)}%",
                f"{r.randint(640, 3840)}x{r.randint(480, 2160)}",
            ]
        )

    # --- templates --------------------------------------------------------------------------------
    def prompt(self) -> tuple[str, list[Span], list[str]]:
        r = self.rng
        k1, k2 = self.keep(), self.keep()
        cue_name, bare_name = self.name(cue=True), self.name(cue=False)
        em, ph, cd, ib, ip = self.email(), self.phone(), self.card(), self.iban(), self.ip()
        templates: list[tuple[str, list[Span]]] = [
            (
                "Hi, my name is {0} and I was charged {k1} twice for order {k2}. Reach me at {1}.",
                [cue_name, em],
            ),
            ("Dear {0}, your ticket from {k1} is updated. Call {1} if you need anything.", [cue_name, ph]),
            ("Please refund card {0} for invoice {k1}; the customer, {1}, paid on {k2}.", [cd, bare_name]),
            ("Transfer {k1} to IBAN {0} before {k2}. Thanks, {1}", [ib, cue_name]),
            ("Our server at {0} crashed after upgrading to {k1} at {k2}. Contact {1}.", [ip, em]),
            ("{0} reported that the login page fails since {k1}. Phone: {1}", [bare_name, ph]),
            ("Write a polite reply to {0} ({1}) about the {k1} discount on order {k2}.", [bare_name, em]),
            (
                "I'm {0}. My card {1} was declined for {k1}, can you check? My number is {2}.",
                [cue_name, cd, ph],
            ),
            ("Summarise: {0} called from {1} about account {2}; resolved on {k1}.", [bare_name, ph, ib]),
            ("Block {0} and {1}; both hit the API {k1} times since {k2}.", [ip, self.ip()]),
            ("Mr. {0} asked to update his email to {1} and his IBAN to {2} (ref {k1}).", [cue_name, em, ib]),
            ("Translate to French: 'Please call {0} at {1} before {k1}.'", [bare_name, ph]),
            (
                "Hello, this is {0} from accounts. Card ending {k1} is fine but {1} failed at {k2}.",
                [cue_name, cd],
            ),
            ("Draft an email to {0} at {1}, cc {2}, about version {k1}.", [bare_name, em, self.email()]),
            ("Forward the logs from {0} (user {1}) to security; incident {k1}, build {k2}.", [ip, em]),
        ]
        template, spans = templates[r.randrange(len(templates))]
        return self._fill(template, spans, [k1, k2])

    def _fill(self, template: str, spans: list[Span], keeps: list[str]) -> tuple[str, list[Span], list[str]]:
        # Build the text left to right so that each span's offsets are known exactly.
        out, placed, used_keeps = "", [], []
        pos = 0
        while pos < len(template):
            brace = template.find("{", pos)
            if brace < 0:
                out += template[pos:]
                break
            out += template[pos:brace]
            close = template.index("}", brace)
            field = template[brace + 1 : close]
            if field.startswith("k"):
                value = keeps[int(field[1:]) - 1]
                used_keeps.append(value)
                out += value
            else:
                span = spans[int(field)]
                placed.append(
                    Span(span.type, span.value, len(out), len(out) + len(span.value), span.cue, span.locale)
                )
                out += span.value
            pos = close + 1
        return out, placed, used_keeps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/pii_prompts.jsonl"))
    args = parser.parse_args()
    gen = Generator(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for i in range(args.n):
            text, spans, keeps = gen.prompt()
            row = {"id": i, "text": text, "pii": [asdict(s) for s in spans], "keep": keeps}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {args.n} prompts to {args.out}")


if __name__ == "__main__":
    main()
