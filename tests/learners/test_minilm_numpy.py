"""The default embedder runs MiniLM in numpy: same vectors as sentence-transformers, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.embeddings import load_embedder

TEXTS = ["hi", "How do I reset my password?", "Play the latest album by Daft Punk on Spotify please",
         "word " * 400, "Ünïcödé — émojis 🙂 and 12345", ""]


def test_minilm_loads_and_embeds_without_torch() -> None:
    code = ("import sys; from retrieval.embeddings import load_embedder; e = load_embedder('minilm'); "
            "v = e.embed(['reset my password']); print(v.shape, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.split() == ["(1,", "384)", "False", "False"]


def test_minilm_rows_are_unit_and_paraphrases_are_close() -> None:
    emb = load_embedder("minilm")
    assert emb.dim == 384 and emb.name == "sentence-transformers/all-MiniLM-L6-v2"
    v = emb.embed(TEXTS)
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    a, para, other = emb.embed(["How can I reset my password?", "I forgot my login credentials",
                                "What's the weather in Oslo"])
    assert a @ para > a @ other + 0.2  # synonyms, which the hashing embedder cannot see
    np.testing.assert_allclose(emb.embed(["hi"])[0], v[0], atol=1e-6)  # batch composition changes nothing


def test_minilm_matches_sentence_transformers() -> None:
    pytest.importorskip("sentence_transformers", reason="the torch extra is not installed")
    from retrieval.embeddings import SentenceTransformerEmbedder

    ours = load_embedder("minilm").embed(TEXTS)
    theirs = SentenceTransformerEmbedder().embed(TEXTS)
    assert np.abs(ours - theirs).max() < 1e-5
