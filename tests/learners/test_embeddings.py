"""HashingEmbedder properties, the factory, and the offline-only loaders (no model needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.embeddings import (
    EmbedderUnavailable,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    StaticEmbedder,
    l2_normalise,
    load_embedder,
)


def test_hashing_shape_dtype_and_unit_norm() -> None:
    emb = HashingEmbedder(dim=128)
    v = emb.embed(["reset my password", "Où est la gare ?", "x"])
    assert v.shape == (3, 128)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert emb.dim == 128 and emb.name == "hashing-128"


def test_hashing_is_deterministic_across_processes() -> None:
    # Python's str hash is salted per process; the embedder must not depend on it.
    code = (
        "from retrieval.embeddings import HashingEmbedder;"
        "print(HashingEmbedder().embed(['cancel my order please'])[0][:8].tolist())"
    )
    root = Path(__file__).resolve().parents[2]
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=root,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    here = HashingEmbedder().embed(["cancel my order please"])[0][:8].tolist()
    assert outs.pop().strip() == str(here)


def test_hashing_paraphrase_closer_than_unrelated() -> None:
    emb = HashingEmbedder()
    a, para, other = emb.embed(
        ["How can I reset my password?", "I need to reset the password", "What's the weather in Oslo"]
    )
    assert a @ para > a @ other + 0.2
    assert a @ a == pytest.approx(1.0, abs=1e-5)


def test_hashing_empty_text_is_zero_vector_not_nan() -> None:
    v = HashingEmbedder(dim=32).embed(["", "   "])
    assert not np.isnan(v).any()
    assert np.all(v == 0)


def test_embed_no_texts() -> None:
    assert HashingEmbedder(dim=16).embed([]).shape == (0, 16)


def test_l2_normalise_keeps_zero_rows() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32


def test_load_embedder_kinds_and_unknown() -> None:
    emb = load_embedder("hashing", dim=64)
    assert isinstance(emb, HashingEmbedder) and emb.dim == 64
    with pytest.raises(ValueError, match="'bogus'"):
        load_embedder("bogus")


def test_missing_model_dirs_raise_instead_of_fetching(tmp_path: Path) -> None:
    # A missing path must never be read as a hub repo id.
    with pytest.raises(EmbedderUnavailable, match="not found"):
        StaticEmbedder(tmp_path / "nope")
    with pytest.raises(EmbedderUnavailable, match="not found"):
        SentenceTransformerEmbedder(tmp_path / "sentence-transformers-all-MiniLM-L6-v2")


def test_fallback_when_model_missing(tmp_path: Path) -> None:
    emb = load_embedder("static", model_dir=tmp_path / "absent", fallback="hashing")
    assert isinstance(emb, HashingEmbedder)
    with pytest.raises(EmbedderUnavailable):
        load_embedder("static", model_dir=tmp_path / "absent")


def test_static_embedder_loads_a_local_model2vec_dir(tmp_path: Path) -> None:
    """A tiny model2vec model built here (random vectors, MiniLM's tokenizer) round-trips the loader."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    from retrieval.embeddings import minilm_path

    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    vecs = np.random.default_rng(0).standard_normal((tok.get_vocab_size(), 16)).astype(np.float32)
    StaticModel(vectors=vecs, tokenizer=tok, normalize=True).save_pretrained(tmp_path / "tiny")

    emb = load_embedder("static", model_dir=tmp_path / "tiny")
    assert isinstance(emb, StaticEmbedder) and emb.dim == 16 and emb.name == "static:tiny"
    v = emb.embed(["hello world", "hello world", "something else entirely"])
    assert v.dtype == np.float32 and v.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-3)
    np.testing.assert_allclose(v[0], v[1])
