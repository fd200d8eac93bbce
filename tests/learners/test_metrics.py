"""Metrics score an answer against its reference in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from learners.scoring import Graded, build_metric, json_field, normalise, parse_grade, token_f1
from retrieval.embeddings import HashingEmbedder


def test_normalise_and_text_metrics() -> None:
    assert normalise("The  Answer, is: 42!") == "answer is 42"
    assert token_f1("the cat sat", "The cat sat.") == 1.0
    assert token_f1("a dog", "the cat") == 0.0
    assert 0 < token_f1("You can return items within 14 days", "Returns within 14 days") < 1
    assert json_field('{"answer": "Paris"}', '{"answer": "paris"}', "answer") == 1.0
    assert json_field('{"answer": "Paris"}', "Paris.", "answer") == 1.0
    assert json_field("not json", "Paris", "answer") == 0.0


@pytest.mark.parametrize(("text", "grade"), [("0.8", 0.8), ("Grade: 1", 1.0), ("I'd say .5", 0.5),
                                              ("0", 0.0), ("no idea", 0.0), ("score 7", 0.0)])
def test_parse_grade(text: str, grade: float) -> None:
    assert parse_grade(text) == grade


async def test_built_metrics() -> None:
    item = Graded("q?", "Paris is the capital", "Paris is the capital")
    for name in ("exact", "normalised", "token_f1"):
        assert await build_metric(name).score(item) == 1.0
    emb = HashingEmbedder()

    async def embed(text: str) -> np.ndarray:
        return np.asarray(emb.embed([text])[0])

    assert await build_metric("embedding", embed=embed).score(item) == pytest.approx(1.0, abs=1e-5)
    asked: list[str] = []

    async def judge(prompt: str) -> str:
        asked.append(prompt)
        return "0.25"

    assert await build_metric("judge", judge=judge).score(item) == 0.25
    assert "Reference: Paris is the capital" in asked[0]
    with pytest.raises(ValueError):
        build_metric("judge")
