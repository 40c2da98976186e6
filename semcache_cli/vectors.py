"""Vector encoding and nearest-neighbour search, in numpy.

Vectors are stored as little-endian float32, L2-normalised, so cosine similarity is a
plain dot product. A large cache is searched in two passes: the sign bit of every
dimension (one bit, 1/32 of the float vector) kept in large chunk blobs is read in a
few rows, Hamming distance (which tracks the angle) picks CANDIDATES entries, and only
their float vectors are read to rank them exactly. A match that matters to a cache
(cosine 0.5 and up) is always among the candidates; far entries only change which
non-match ranks first. Imported only on the semantic path: the exact layer never pays
for numpy.
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


CANDIDATES = 256  # entries re-ranked exactly per lookup


def sign_code(vector: np.ndarray) -> bytes:
    """One bit per dimension: set where the component is positive."""
    return np.packbits(np.asarray(vector) > 0).tobytes()


def sign_codes(matrix: np.ndarray) -> np.ndarray:
    return np.packbits(matrix > 0, axis=1)


def hamming_candidates(query: np.ndarray, ids: bytes, codes: bytes, k: int = CANDIDATES) -> list[int]:
    """The ids of the k codes nearest the query's in Hamming distance (ids as <i8 bytes,
    codes as concatenated sign codes), duplicates removed."""
    all_ids = np.frombuffer(ids, dtype="<i8")
    if all_ids.size == 0:
        return []
    width = len(codes) // all_ids.size
    if width % 8 == 0:  # count bits 64 at a time
        stored = np.frombuffer(codes, dtype="<u8").reshape(all_ids.size, width // 8)
        mine = np.frombuffer(sign_code(query), dtype="<u8")
    else:
        stored = np.frombuffer(codes, dtype=np.uint8).reshape(all_ids.size, width)
        mine = np.frombuffer(sign_code(query), dtype=np.uint8)
    distance = np.bitwise_count(stored ^ mine).sum(axis=1, dtype=np.int32)
    if all_ids.size > k:
        chosen = np.argpartition(distance, k - 1)[:k]
        return list(dict.fromkeys(all_ids[chosen].tolist()))
    return list(dict.fromkeys(all_ids.tolist()))


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
