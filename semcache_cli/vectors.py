"""Vector encoding and nearest-neighbour search, in numpy.

Vectors are stored as little-endian float32, L2-normalised, so cosine similarity is a
plain dot product over one matrix built from the concatenated blobs in a single pass.
Imported only on the semantic path: the exact layer never pays for numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DTYPE = "<f4"


def unit_vector(values: Sequence[float]) -> np.ndarray:
    """L2-normalised float32 copy; ValueError for an empty, zero or non-finite vector."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0 or not np.all(np.isfinite(vector)):
        raise ValueError("embedding is empty or not finite")
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ValueError("embedding is all zeros")
    return (vector / norm).astype(DTYPE)


def encode(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=DTYPE).tobytes()


def decode(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=DTYPE)


def top_matches(query: np.ndarray, ids: list[int], blob: bytes, k: int = 5) -> list[tuple[int, float]]:
    """The k stored vectors most similar to query, best first, as (id, cosine)."""
    if not ids:
        return []
    matrix = np.frombuffer(blob, dtype=DTYPE).reshape(len(ids), query.size)
    scores = matrix @ query.astype(DTYPE)
    k = min(k, len(ids))
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(ids[i], float(min(1.0, scores[i]))) for i in best]
