"""`[privacy] name_pseudonyms`: person names are stored as stable keyed fake names, the same in the
prompt, the response and the correction, so an extraction example still teaches extracting a name;
the learners accept those names; forgetting a user still removes the examples their calls gave."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.config.settings import PrivacySettings
from gateway.privacy.pseudonym import NamePseudonyms, load_key, pseudonymizer
from gateway.privacy.scrubber import Scrubber
from gateway.store import open_store
from gateway.store.artifacts import ArtifactRegistry
from gateway.store.forget import forget_user
from tests.conftest import fetch_call, poll_store
from tests.learners.scenario import ROUTE, Client, config

NAMES = ["Jane Doe", "Priya Raghunathan", "Tomas Berg", "Olga Petrova", "Liam Walsh", "Aiko Sato",
         "Marta Ruiz", "Hannah Becker"]


def test_a_name_maps_to_the_same_fake_name_wherever_it_appears() -> None:
    names = NamePseudonyms(b"k" * 32)
    scrubber = Scrubber(names=names)
    prompt = scrubber.scrub("Extract the name: Hello, my name is Jane Doe and my parcel is late.")
    fake = names("Jane Doe")
    assert fake != "Jane Doe" and "Jane" not in prompt and "Doe" not in prompt
    assert fake in prompt and scrubber.scrub("Jane Doe") == fake  # the correction, scrubbed on its own
    assert scrubber.scrub("Dear Mr. Doe, thanks") == f"Dear Mr. {names('Doe')}, thanks" and fake.endswith(names("Doe"))
    assert NamePseudonyms(b"x" * 32)("Jane Doe Smith") != names("Jane Doe Smith")  # keyed per deployment
    assert Scrubber().scrub("my name is Jane Doe") == "my name is <PERSON>"  # off: placeholders


def test_off_by_default() -> None:
    assert PrivacySettings().name_pseudonyms is False


def test_extraction_examples_keep_a_name_to_extract_and_forget_still_reaches_them(
        make_gateway: Any, fake_upstream: str, tmp_path: Path) -> None:
    cfg = config(fake_upstream, tmp_path)
    cfg["privacy"] = {"name_pseudonyms": True, "user_key_env": None, "user_key_path": str(tmp_path / "user.key")}
    gw = make_gateway(cfg)
    c = Client(gw.url)
    privacy = gw.gateway.settings.privacy
    fake = NamePseudonyms(load_key(privacy))
    calls = []
    for i, name in enumerate(NAMES):
        question = f"Extract the customer's name: Hello, my name is {name} and my parcel is late."
        call_id, _, _ = c.ask(f"user-{i}", question)
        c.feedback(call_id, correction=name)
        calls.append(call_id)
    stored = fetch_call(gw, calls[0])
    text = stored.request["messages"][-1]["content"]
    assert "Jane" not in text and fake("Jane Doe") in text
    fb = poll_store(gw, lambda s: _first(s.list_feedback(call_ids=[calls[0]])), "the correction")
    assert fb.correction == fake("Jane Doe")  # the same fake name as in the prompt: still an extraction

    report = c.learn()
    index = next(x for x in report["candidates"] if x["kind"] == "index")
    assert "PII" not in index["reason"], index  # the learners accept pseudonymised names

    async def examples() -> list[dict[str, Any]]:
        store = open_store(privacy_url(gw))
        try:
            rec = await ArtifactRegistry(store).get(ROUTE, "index", index["version"])
            assert rec is not None
            return list(rec.body["examples"])
        finally:
            await store.close()

    learned = asyncio.run(examples())
    assert learned and all(e["output"] in e["input"] and e["output"] not in NAMES for e in learned)
    assert any(e["output"] == fake("Jane Doe") for e in learned) or len(learned) < len(NAMES)

    async def forget() -> list[dict[str, Any]]:
        store = open_store(privacy_url(gw))
        try:
            pseudo = pseudonymizer(privacy)
            users = [f"user-{i}" for i in range(len(NAMES))]
            await forget_user(store, users + [pseudo.user(u) for u in users] if pseudo else users, [ROUTE])
            rec = await ArtifactRegistry(store).get(ROUTE, "index", index["version"])
            assert rec is not None
            return list(rec.body["examples"])
        finally:
            await store.close()

    assert asyncio.run(forget()) == []  # every example came from a forgotten user's call


def privacy_url(gw: Any) -> str:
    return str(gw.gateway.settings.store.url)


async def _first(rows: Any) -> Any:
    found = await rows
    return found[0] if found else None
