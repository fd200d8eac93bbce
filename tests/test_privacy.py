"""PII scrubber: the generated fixture, non-PII that must survive, and record-level scrubbing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.privacy import Finding, PresidioPersons, Scrubber
from gateway.privacy.names import DEFAULT_LOCALES
from gateway.privacy.patterns import iban_valid, luhn_valid
from gateway.store.records import Attempt, CallRecord, FeedbackRecord, evolve

FIXTURE = Path(__file__).parent / "fixtures" / "pii_prompts.jsonl"


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return Scrubber()


def _rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line]


def _claimed(span: dict[str, Any]) -> bool:
    """What the scrubber claims to catch: every span, except names with no cue from a locale
    outside its name lists (those are measured by bench/pii_scrub.py, not promised)."""
    return span["type"] != "PERSON" or span["cue"] or span["locale"] in DEFAULT_LOCALES


def test_fixture_is_generated_and_sized() -> None:
    rows = _rows()
    assert len(rows) == 200
    types = {span["type"] for row in rows for span in row["pii"]}
    assert types == {"EMAIL", "PHONE", "CARD", "IBAN", "IP", "PERSON"}
    for row in rows:
        for span in row["pii"]:
            assert row["text"][span["start"] : span["end"]] == span["value"]


def test_no_planted_pii_survives(scrubber: Scrubber) -> None:
    leaks: list[str] = []
    for row in _rows():
        out = scrubber.scrub(row["text"])
        for span in filter(_claimed, row["pii"]):
            # For names, no part of the name may survive either ("Maria <PERSON>" still leaks).
            parts = [p for p in span["value"].split() if len(p) > 2] if span["type"] == "PERSON" else []
            if span["value"] in out or any(p in out for p in parts):
                leaks.append(f"{span['type']} {span['value']!r}: {out}")
    assert leaks == []


def test_placeholders_are_typed(scrubber: Scrubber) -> None:
    for row in _rows()[:50]:
        out = scrubber.scrub(row["text"])
        for span in filter(_claimed, row["pii"]):
            assert f"<{span['type']}>" in out


def test_planted_non_pii_is_kept(scrubber: Scrubber) -> None:
    for row in _rows():
        out = scrubber.scrub(row["text"])
        for keep in row["keep"]:
            assert keep in out, (keep, out)


@pytest.mark.parametrize(
    "text",
    [
        "The order #12345 costs $1,299.00 and ships on 2024-05-01 at 14:30.",
        "Upgrade from Python 3.11.7 to 3.12.1; the API v2.4.1 changed on 03/12/2025.",
        "Version 1.2.3.4 and v10.0.0.1 are builds, not addresses.",
        "Revenue grew 12% to €4.2M; 1920x1080 screens; 3 items at 19.99 each.",
        "Card-like but Luhn-invalid: 4111 1111 1111 1112. Bad IBAN: DE89 3704 0044 0532 0130 01.",
        "Grant access to the repo in June, then Mark the task done and Bill the customer.",
        "Claude and Gemini answered; deploy with Docker on Kubernetes from Microsoft Azure.",
        "Tracking 123456 and SKU 998877 shipped; invoice INV-2024-0042 is paid.",
        "Use HTTP/1.1 at 12:30:45 with TLS 1.3 and RFC 9110.",
        # a valid French number once the trunk 0 is added (01 23 45 67 89), but nobody writes it so
        "Where is my order 123456789? It shipped on Monday.",
    ],
)
def test_non_pii_text_stays_intact(scrubber: Scrubber, text: str) -> None:
    assert scrubber.scrub(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me at jane.doe+work@example.co.uk now", "mail me at <EMAIL> now"),
        ("call +1 415 555 2671 today", "call <PHONE> today"),
        ("call (415) 555-2671 today", "call <PHONE> today"),
        ("ruf an: 030 901820", "ruf an: <PHONE>"),
        ("appelle le 06 12 34 56 78", "appelle le <PHONE>"),
        ("call 0044 20 7946 0958", "call <PHONE>"),
        ("call 020 7946 0958", "call <PHONE>"),
        ("call 1 415 555 2671", "call <PHONE>"),  # NANP's optional 1
        ("card 4111-1111-1111-1111 ok", "card <CARD> ok"),
        ("amex 3782 822463 10005", "amex <CARD>"),
        ("iban GB82 WEST 1234 5698 7654 32, thanks", "iban <IBAN>, thanks"),
        ("iban DE89370400440532013000.", "iban <IBAN>."),
        ("from 192.168.1.10 and 2001:db8::8a2e:370:7334 and ::1", "from <IP> and <IP> and <IP>"),
        ("Hi, my name is John Smith.", "Hi, my name is <PERSON>."),
        ("my name is maria garcia", "my name is <PERSON>"),
        ("Dear Ms. Okonkwo, thanks!", "Dear Ms. <PERSON>, thanks!"),
        ("Please ask Priya about it.", "Please ask <PERSON> about it."),
        ("Ludwig van Beethoven wrote it.", "<PERSON> wrote it."),
        ("Je m'appelle Camille Dubois.", "Je m'appelle <PERSON>."),
        ("I'm Fridrich Talpaš, hi.", "I'm <PERSON>, hi."),
        ("Sarah's laptop", "<PERSON>'s laptop"),
    ],
)
def test_scrub_examples(scrubber: Scrubber, text: str, expected: str) -> None:
    assert scrubber.scrub(text) == expected


def test_find_reports_types_and_offsets(scrubber: Scrubber) -> None:
    text = "Write to bob@example.com or 10.0.0.7"
    found = scrubber.find(text)
    assert found == [Finding("EMAIL", 9, 24), Finding("IP", 28, 36)]
    assert [text[f.start : f.end] for f in found] == ["bob@example.com", "10.0.0.7"]


def test_overlaps_resolve_to_the_specific_type(scrubber: Scrubber) -> None:
    # The email holds a name, the card could pass for a phone: one finding each, of the right type.
    assert [f.type for f in scrubber.find("john.smith@example.com 4111111111111111")] == ["EMAIL", "CARD"]


def test_type_selection() -> None:
    only_email = Scrubber(types={"EMAIL"})
    assert only_email.scrub("a@b.io, +44 20 7946 0958, John Smith") == "<EMAIL>, +44 20 7946 0958, John Smith"
    with pytest.raises(ValueError, match="unknown PII types"):
        Scrubber(types={"EMAIL", "PASSPORT"})  # type: ignore[arg-type]


def test_us_ssn_is_scrubbed_and_impossible_ones_are_kept() -> None:
    scrubber = Scrubber(types={"SSN", "PHONE"})
    assert scrubber.scrub("my SSN is 123-45-6789.") == "my SSN is <SSN>."
    # never issued (area 000/666/9xx, group 00, serial 0000), or not written AAA-GG-SSSS
    for kept in ("000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "order 123456789"):
        assert scrubber.scrub(kept) == kept


def test_pseudonyms_are_keyed_stable_and_not_hashed_twice() -> None:
    from gateway.privacy.pseudonym import Pseudonymizer

    a, b = Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    p = a.user("alice@example.com")
    assert p.startswith("u-") and "alice" not in p and p == a.user("alice@example.com")
    assert a.user(p) == p  # a stored pseudonym (a re-ingested row) stays as it is
    assert b.user("alice@example.com") != p  # keyed: another deployment's key gives another id


def test_checksums() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("DE8937")


def _record() -> CallRecord:
    request = {
        "model": "support-bot",
        "user": "jane@example.com",
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "You help customers."},
            {"role": "user", "name": "Jane", "content": "I'm Jane Miller, call me on +44 20 7946 0958."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Card 4111 1111 1111 1111 was charged twice."},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,QUJD", "detail": "low"},
                    },
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}],
    }
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Refunding for Jane Miller (jane@example.com).",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "refund",
                                "arguments": json.dumps({"email": "jane@example.com", "amount": 12.5}),
                            },
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12},
    }
    return CallRecord(
        id="chatcmpl-1",
        route="support-bot",
        variant="small",
        model="small",
        user="jane@example.com",
        request=request,
        response=response,
        error="upstream rejected jane@example.com",
        attempts=[Attempt("small", "openai", 400, "bad value jane@example.com", 3.0)],
    )


def test_scrub_call_scrubs_texts_and_keeps_structure(scrubber: Scrubber) -> None:
    rec = _record()
    original = json.dumps(rec.request) + json.dumps(rec.response)
    out = scrubber.scrub_call(rec)
    dumped = (
        json.dumps(out.request) + json.dumps(out.response) + (out.error or "") + str(out.attempts[0].error)
    )
    for value in ("jane@example.com", "Jane Miller", "7946 0958", "4111 1111"):
        assert value not in dumped
    msgs = out.request["messages"]
    assert msgs[1]["content"] == "I'm <PERSON>, call me on <PHONE>."
    assert msgs[1]["name"] == "Jane"  # an identifier the upstream validates, kept
    assert msgs[2]["content"][0] == {"type": "text", "text": "Card <CARD> was charged twice."}
    assert msgs[2]["content"][1] == rec.request["messages"][2]["content"][1]  # image part untouched
    assert out.request["model"] == "support-bot" and out.request["temperature"] == 0.2
    assert out.request["tools"] == rec.request["tools"]
    assert out.request["user"] == "<EMAIL>"
    message = out.response["choices"][0]["message"]
    assert message["content"] == "Refunding for <PERSON> (<EMAIL>)."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "email": "<EMAIL>",
        "amount": 12.5,
    }
    assert message["tool_calls"][0]["function"]["name"] == "refund"
    assert out.response["usage"] == rec.response["usage"] and out.response["id"] == "chatcmpl-1"
    assert out.error == "upstream rejected <EMAIL>"
    assert out.attempts[0].error == "bad value <EMAIL>" and out.attempts[0].status == 400
    # Metadata stays, and the input record is not mutated.
    assert out.user == "jane@example.com" and out.id == rec.id and out.route == rec.route
    assert json.dumps(rec.request) + json.dumps(rec.response) == original


def test_scrub_call_handles_empty_and_unparsable(scrubber: Scrubber) -> None:
    rec = CallRecord(id="c", route="r", variant="v", model="m", no_log=True)
    assert scrubber.scrub_call(rec).request is None
    args = {"function": {"name": "f", "arguments": '{"to": "bob@example.com"'}}  # cut mid-stream
    assert scrubber.scrub_json(args)["function"]["arguments"] == '{"to": "<EMAIL>"'


def test_a_call_without_pii_is_returned_as_it_is_and_its_arguments_keep_their_text(scrubber: Scrubber) -> None:
    arguments = '{"city":  "Lyon", "days": 3}'  # odd spacing: a re-serialisation would change it
    clean = CallRecord(
        id="c", route="r", variant="v", model="m",
        request={"messages": [{"role": "user", "content": "What is the weather like next week?"}]},
        response={"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "weather", "arguments": arguments}}]}}]},
    )  # fmt: skip
    assert scrubber.scrub_call(clean) is clean  # nothing copied
    retried = evolve(clean, attempts=[Attempt("small", "openai", 503, "upstream overloaded", 3.0)])
    assert scrubber.scrub_call(retried) is retried  # an error without PII is not copied either
    leaky = evolve(clean, request={"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Mail jane@example.com"}]})  # fmt: skip
    out = scrubber.scrub_call(leaky)
    assert out.request["messages"][1]["content"] == "Mail <EMAIL>"
    assert leaky.request["messages"][1]["content"] == "Mail jane@example.com"  # the input is not modified
    assert out.request["messages"][0] is leaky.request["messages"][0]  # untouched parts are shared
    assert out.response is clean.response


def test_scrub_feedback(scrubber: Scrubber) -> None:
    fb = FeedbackRecord(
        call_id="c1",
        rating=-1,
        correction="Email ana@example.org instead.",
        correction_diff="-Email bob\n+Email ana@example.org",
        comment="I'm Ana Souza, wrong address",
    )
    out = scrubber.scrub_feedback(fb)
    assert out.correction == "Email <EMAIL> instead."
    assert out.correction_diff == "-Email bob\n+Email <EMAIL>"
    assert out.comment == "I'm <PERSON>, wrong address"
    assert (out.call_id, out.rating, out.id) == ("c1", -1, fb.id)
    assert fb.comment == "I'm Ana Souza, wrong address"


@dataclass
class _FakeResult:
    entity_type: str
    start: int
    end: int
    score: float


class _FakeAnalyzer:
    def analyze(self, text: str, language: str, entities: list[str] | None = None) -> list[Any]:
        assert entities == ["PERSON"] and language == "en"
        return [_FakeResult("PERSON", 0, 4, 0.85), _FakeResult("PERSON", 10, 14, 0.2)]


def test_presidio_adapter_plugs_in_as_extra_detector() -> None:
    s = Scrubber(types={"PERSON", "EMAIL"}, extra_detectors=[PresidioPersons(_FakeAnalyzer())])
    assert s.scrub("Zorg said hi to Xy") == "<PERSON> said hi to Xy"  # low-score result dropped


def test_a_repeated_text_is_scrubbed_once_and_the_cache_is_bounded() -> None:
    seen: list[str] = []

    def spy(text: str) -> list[Finding]:
        seen.append(text)
        return []

    s = Scrubber(extra_detectors=[spy])
    system = "You are a helpful assistant. Escalate to bob@example.com."
    for _ in range(3):  # a system prompt, on every call of an app
        assert s.scrub(system) == "You are a helpful assistant. Escalate to <EMAIL>."
    assert seen == [system]
    for i in range(600):  # more distinct texts than the cache holds push it out
        s.scrub(f"Ticket {i:05d}: the printer is on fire again.")
    s.scrub(system)
    assert seen.count(system) == 2


def test_a_scrubber_without_a_cache_scrubs_every_text_in_full() -> None:
    seen: list[str] = []

    def spy(text: str) -> list[Finding]:
        seen.append(text)
        return []

    s = Scrubber(extra_detectors=[spy], cache_size=0)  # how bench.pii_scrub times the detectors
    system = "You are a helpful assistant. Escalate to bob@example.com."
    for _ in range(3):
        assert s.scrub(system) == "You are a helpful assistant. Escalate to <EMAIL>."
    assert seen == [system] * 3


def test_an_unknown_phone_region_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown phone region 'XX'"):
        Scrubber(types={"PHONE"}, phone_regions=("US", "XX"))
