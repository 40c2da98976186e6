"""Vector encoding and nearest-neighbour search.

Vectors are stored as little-endian float32, L2-normalised, so cosine similarity is a
plain dot product. A large cache is searched in two passes: the sign bit of every
dimension (one bit, 1/32 of the float vector) kept in large chunk blobs is read in a
few rows, Hamming distance (which tracks the angle) picks CANDIDATES entries, and only
their float vectors are read to rank them exactly. A match that matters to a cache
(cosine 0.5 and up) is always among the candidates; far entries only change which
non-match ranks first.

Both passes exist twice, in numpy and in plain Python, with the same results: importing
numpy costs a fresh `semcache ask` ~90 ms, more than the plain-Python passes over
NUMPY_FROM codes, so a small cache never imports it. A query vector is an array('f')
(or a numpy row, when replay already has numpy); similarities are float64 dot products
of the float32 vectors on both paths.
"""

from __future__ import annotations

import heapq
import math
import sys
from array import array
from collections.abc import Iterable, Sequence
from operator import mul

DTYPE = "<f4"
CANDIDATES = 256  # entries re-ranked exactly per lookup
NUMPY_FROM = 60_000  # codes: ~0.5-0.8 µs each in plain Python, well under numpy's import (~90 ms) and 60 ms
_BIG_ENDIAN = sys.byteorder == "big"


def use_numpy(count: int) -> bool:
    """numpy once it is imported anyway (replay, bulk stores), or for a scan large enough
    to pay for importing it."""
    return count > NUMPY_FROM or "numpy" in sys.modules


def unit_vector(values: Sequence[float]) -> array:
    """L2-normalised float32 copy; ValueError for an empty, zero or non-finite vector."""
    try:
        floats = [float(x) for x in values]
    except (TypeError, ValueError):
        raise ValueError("embedding holds something that is not a number") from None
    squares = sum(map(mul, floats, floats))  # inf or nan if any component is
    if not floats or not math.isfinite(squares):
        raise ValueError("embedding is empty or not finite")
    if squares == 0.0:
        raise ValueError("embedding is all zeros")
    norm = math.sqrt(squares)
    return array("f", [x / norm for x in floats])


def encode(vector: Sequence[float]) -> bytes:
    if use_numpy(0):  # converts a numpy row (replay) at once, and an array('f') as well
        import numpy as np

        return np.asarray(vector, dtype=DTYPE).tobytes()
    values = array("f", vector)
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tobytes()


def decode(blob: bytes) -> array:
    values = array("f", blob)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def sign_code(vector: Sequence[float]) -> bytes:
    """One bit per dimension, set where the component is positive, first dimension in
    the high bit of the first byte (numpy.packbits' order), zero-padded to whole bytes."""
    if use_numpy(0):
        import numpy as np

        return np.packbits(np.asarray(vector, dtype=np.float32) > 0).tobytes()
    bits = "".join("1" if x > 0 else "0" for x in vector)
    pad = -len(bits) % 8
    return (int(bits, 2) << pad).to_bytes((len(bits) + pad) // 8, "big") if bits else b""


def sign_codes(blob: bytes, dims: int) -> list[bytes]:
    """sign_code of every vector of a blob of them (bulk stores and rebuilds: numpy)."""
    import numpy as np

    matrix = np.frombuffer(blob, dtype=DTYPE).reshape(-1, dims)
    return [row.tobytes() for row in np.packbits(matrix > 0, axis=1)]


def hamming_candidates(query: Sequence[float], ids: bytes, codes: bytes, k: int = CANDIDATES) -> list[int]:
    """The ids of the k codes nearest the query's in Hamming distance (ids as <i8 bytes,
    codes as concatenated sign codes), duplicates removed."""
    count = len(ids) // 8
    if count == 0:
        return []
    width = len(codes) // count
    if count <= k:
        chosen: Iterable[int] = range(count)
    elif use_numpy(count):
        chosen = _nearest_codes_numpy(sign_code(query), codes, count, width, k)
    else:
        chosen = _nearest_codes_python(sign_code(query), codes, count, width, k)
    all_ids = array("q", ids)
    if _BIG_ENDIAN:
        all_ids.byteswap()
    return list(dict.fromkeys(all_ids[i] for i in chosen))


def _nearest_codes_numpy(mine: bytes, codes: bytes, count: int, width: int, k: int) -> list[int]:
    import numpy as np

    lane = "<u8" if width % 8 == 0 else np.uint8  # count bits 64 at a time where the width allows
    stored = np.frombuffer(codes, dtype=lane).reshape(count, -1)
    distance = np.bitwise_count(stored ^ np.frombuffer(mine, dtype=lane)).sum(axis=1, dtype=np.int32)
    return np.argpartition(distance, k - 1)[:k].tolist()


def _nearest_codes_python(mine: bytes, codes: bytes, count: int, width: int, k: int) -> list[int]:
    query = int.from_bytes(mine, "little")
    take = int.from_bytes
    distance = [(query ^ take(codes[i:i + width], "little")).bit_count() for i in range(0, count * width, width)]
    return heapq.nsmallest(k, range(count), key=distance.__getitem__)


def top_matches(query: Sequence[float], ids: list[int], blob: bytes, k: int = 5) -> list[tuple[int, float]]:
    """The k stored vectors most similar to query, best first, as (id, cosine); equal
    scores keep the order of ids."""
    if not ids:
        return []
    k = min(k, len(ids))
    if use_numpy(len(ids)):
        scores = _scores_numpy(query, blob, len(ids))
    else:
        scores = _scores_python(query, blob, len(ids))
    best = sorted(range(len(ids)), key=lambda i: -scores[i])[:k]
    return [(ids[i], min(1.0, scores[i])) for i in best]


def _scores_numpy(query: Sequence[float], blob: bytes, count: int) -> list[float]:
    import numpy as np

    matrix = np.frombuffer(blob, dtype=DTYPE).reshape(count, -1).astype(np.float64)
    return (matrix @ np.asarray(query, dtype=np.float32).astype(np.float64)).tolist()


def _scores_python(query: Sequence[float], blob: bytes, count: int) -> list[float]:
    stored = decode(blob)
    dims = len(stored) // count
    mine = [float(x) for x in query]
    return [sum(map(mul, mine, stored[i:i + dims])) for i in range(0, count * dims, dims)]

