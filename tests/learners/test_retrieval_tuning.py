"""Retrieval that tunes itself: BM25 and hybrid scoring, thresholds relative to the best match, and
an index's chosen tuning travelling in its artifact body to the request path."""

from __future__ import annotations

import numpy as np

from gateway.config.settings import RetrievalSettings
from gateway.serve.augment import LoadedIndex, ServingSet, apply
from learners.index import tuning_grid
from retrieval.embeddings import HashingEmbedder
from retrieval.examples import Example, ExampleIndex
from retrieval.lexical import BM25, Tuning

EMB = HashingEmbedder()
TEXTS = ["Tell me about Zorblax invoices", "What is the weather today", "Play some music today",
         "Weather forecast for today", "Open the garage door"]
EXAMPLES = [Example(f"e{i}", t, f"answer {i}", f"c{i}", "correction", float(i)) for i, t in enumerate(TEXTS)]
INDEX = ExampleIndex.build(EXAMPLES, EMB)


async def embed(text: str) -> np.ndarray:
    return EMB.embed([text])[0]


def test_bm25_weighs_rare_words() -> None:
    scores = BM25(TEXTS).scores("zorblax question")
    assert int(np.argmax(scores)) == 0 and scores[1:].max() == 0


async def test_scorings_and_relative_threshold() -> None:
    q = "weather today please"
    vec = await embed(q)
    lexical = INDEX.search(vec, q, Tuning("bm25", 5, 0.0, 0.0), 5)
    assert {e.id for e, _ in lexical} == {"e1", "e2", "e3"} and lexical[0][0].id in ("e1", "e3")
    strict = INDEX.search(vec, q, Tuning("bm25", 5, 0.0, 0.9), 5)
    assert len(strict) < len(lexical) and strict[0][1] == 1.0  # normalised: the best scores 1
    hybrid = INDEX.search(vec, q, Tuning("hybrid", 2, -1.0, 0.0), 2)
    assert len(hybrid) == 2 and hybrid[0][1] >= hybrid[1][1]
    dense = INDEX.search(vec, q, Tuning("dense", 5, -1.0, 0.0), 5)
    assert len(dense) == 5


async def test_the_chosen_tuning_travels_with_the_index_and_the_request_path_applies_it() -> None:
    tuned = INDEX.with_tuning(Tuning("bm25", 1, 0.0, 0.0))
    loaded = ExampleIndex.from_body(tuned.to_body(), EMB)
    assert loaded.tuning == Tuning("bm25", 1, 0.0, 0.0)
    msgs = [{"role": "user", "content": "Zorblax invoices again?"}]
    route_settings = RetrievalSettings(k=4, min_score=0.99)  # would retrieve nothing
    aug = await apply("bot", msgs, ServingSet(None, LoadedIndex("i1", loaded)), route_settings, embed)
    assert aug is not None and aug.retrieved_ids == ("e0",)  # the index's tuning, not the route's


def test_the_grid_starts_with_the_route_settings_and_can_be_turned_off() -> None:
    grid = tuning_grid(RetrievalSettings(k=3, min_score=0.2))
    assert grid[0] == Tuning("dense", 3, 0.2, 0.0) and {t.scoring for t in grid} == {"dense", "bm25", "hybrid"}
    assert tuning_grid(RetrievalSettings(tune=False)) == [Tuning()]


def test_agreeing_order_puts_the_consensus_closest_to_the_question() -> None:
    from retrieval.lexical import arrange

    hits = [("a1", 0.9), ("b1", 0.8), ("b2", 0.7), ("a2", 0.6), ("b3", 0.5)]  # best first

    def answer(h: str) -> str:
        return {"a": "Positive", "b": " negative "}[h[0]]

    assert [h for h, _ in arrange(hits, "agreeing", answer)] == ["b1", "b2", "b3", "a1", "a2"]
    assert arrange(hits, "nearest", answer) == hits
    unique = [(f"x{i}", 1.0 - i / 10) for i in range(4)]  # free-text answers never repeat: nothing moves
    assert arrange(unique, "agreeing", lambda h: h) == unique
    tie = [("a1", 0.9), ("b1", 0.8), ("b2", 0.7), ("a2", 0.6)]  # no majority: nothing moves
    assert arrange(tie, "agreeing", answer) == tie
    t = Tuning("dense", 8, -1.0, 0.5, "agreeing")
    assert Tuning.from_dict(t.to_dict()) == t and t.describe().endswith("agreeing closest")
    assert t in tuning_grid(RetrievalSettings())  # the learning cycle tries it on held-out calls


async def test_an_agreeing_index_injects_the_consensus_next_to_the_question() -> None:
    texts = ["great film", "great movie", "great show", "great book", "great song"]
    outs = ["negative", "positive", "positive", "negative", "positive"]
    ex = [Example(f"p{i}", t, o, f"c{i}", "correction", float(i))
          for i, (t, o) in enumerate(zip(texts, outs, strict=True))]
    index = ExampleIndex.build(ex, EMB).with_tuning(Tuning("dense", 5, -1.0, 0.0, "agreeing"))
    msgs = [{"role": "user", "content": "great film"}]
    aug = await apply("bot", msgs, ServingSet(None, LoadedIndex("i1", index)), RetrievalSettings(), embed)
    assert aug is not None and len(aug.retrieved_ids) == 5
    # the last example before the question gives the answer most neighbours give
    assert aug.messages[-2] == {"role": "assistant", "content": "positive"}
    # read best first: "great film" itself
    assert aug.memory is not None and aug.memory.answer == ("positive",) and aug.memory_score > 0.99
