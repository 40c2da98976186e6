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
from typing import Any, NamedTuple

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


def ranked(query: Sequence[float], ids: list[int], blob: bytes, k: int,
           directions: Sequence[Sequence[float]] = ()) -> list[tuple[int, float, tuple[float, ...]]]:
    """top_matches, each with its vector's projections on `directions` (computed only
    for the k it returns: D dot products each)."""
    found = top_matches(query, ids, blob, k)
    if not directions or not found:
        return [(entry_id, score, ()) for entry_id, score in found]
    width = len(blob) // len(ids)
    offset = {entry_id: i * width for i, entry_id in enumerate(ids)}
    rows = [blob[offset[entry_id]:offset[entry_id] + width] for entry_id, _ in found]
    if use_numpy(0):  # numpy loaded (replay's workers): one product for all of them
        import numpy as np

        matrix = np.frombuffer(b"".join(rows), dtype=DTYPE).reshape(len(rows), -1).astype(np.float64)
        products = (matrix @ np.asarray(directions, dtype=np.float64).T).tolist()
        return [(entry_id, score, tuple(p)) for (entry_id, score), p in zip(found, products, strict=True)]
    return [(entry_id, score, projections(decode(row), directions)) for (entry_id, score), row in zip(found, rows,
                                                                                                       strict=True)]


def _scores_numpy(query: Sequence[float], blob: bytes, count: int) -> list[float]:
    import numpy as np

    matrix = np.frombuffer(blob, dtype=DTYPE).reshape(count, -1).astype(np.float64)
    return (matrix @ np.asarray(query, dtype=np.float32).astype(np.float64)).tolist()


def _scores_python(query: Sequence[float], blob: bytes, count: int) -> list[float]:
    stored = decode(blob)
    dims = len(stored) // count
    mine = [float(x) for x in query]
    return [sum(map(mul, mine, stored[i:i + dims])) for i in range(0, count * dims, dims)]



# -- the calibrated similarity scale ---------------------------------------------------
#
# Embedding models spread their cosines differently: many put every pair of sentences in
# a narrow band near 1 (a common mean direction and a few dominant directions in every
# vector), so one cosine threshold cannot mean the same on all of them. The calibrated
# score, estimated per (embedding model, dims) from the vectors a cache holds and no
# labels, removes the variation along the stored vectors' top D principal directions
# (keeping the mean) and measures the cosine of what is left against its median over
# random stored pairs: 1 is identical, 0 a typical unrelated pair, whatever the model.
# For unit x, y with x.y known and a(v) = U v - p (p = U mu, U the top-D directions):
#   z(x).z(y) = x.y - a(x).a(y) - p.(a(x) + a(y)),   |z(x)|^2 = 1 - |a(x)|^2 - 2 p.a(x)
#   c = z(x).z(y) / (|z(x)| |z(y)|),   s = min(1, (c - m0) / (1 - m0))
# so a candidate costs D dot products beyond its cosine. The study behind the choices
# (methods compared on real intent data and anisotropic variants of it) is summarised in
# docs/calibration.md.

CALIBRATION_MIN_VECTORS = 32  # without reference vectors, under this many stored vectors of a model: no semantic hits
CALIBRATION_SAMPLE = 2_048  # stored vectors an estimate is made from
CALIBRATION_PAIRS = 4_096  # random pairs of them the median is taken over
RERANK = 32  # raw-cosine candidates whose calibrated score is computed
_IDENTICAL = 0.9999  # a pair this close is the same vector
DEGENERATE_IDENTICAL_SHARE = 0.02
DEGENERATE_SPREAD = 0.02
DEGENERATE_EFFECTIVE_DIMS = 3.0
# Nothing is served below this raw cosine, whatever a scale says: the calibrated score of
# a pair this far apart is never a paraphrase's on any model measured (bench/cold_start.py),
# so a scale made wrong (edited, damaged, or from vectors unlike the questions) cannot
# turn unrelated questions into hits.
COSINE_FLOOR = 0.5


class Calibration(NamedTuple):
    """One embedding model's scale, as the store keeps it."""

    dims: int
    vectors: int  # stored vectors of the model when it was estimated
    checked_at: int  # the entry id at which the store's growth was last looked at
    directions: tuple[array, ...]  # U: the top-D principal directions, unit rows
    offsets: tuple[float, ...]  # p = U mu
    median: float  # m0: the calibrated cosine of a typical unrelated pair
    spread: float  # 1 - the median raw cosine of random pairs
    effective_dims: float  # (sum of eigenvalues)^2 / sum of their squares
    identical: float  # share of random pairs that are the same vector
    reference: int = 0  # reference questions' vectors in the sample it was made from
    distinct: int = 0  # the cache's own distinct vectors in that sample (0 before the reference questions)

    @property
    def ready(self) -> bool:
        """Estimated: the model has enough stored vectors (the cold state has none)."""
        return bool(self.directions)

    @property
    def problem(self) -> str | None:
        """Why this model's vectors cannot tell questions apart, or None."""
        if self.identical >= DEGENERATE_IDENTICAL_SHARE:
            return f"{self.identical:.0%} of random pairs of its vectors are identical"
        if self.spread < DEGENERATE_SPREAD:
            return f"its vectors are nearly all alike (median cosine of random pairs {1 - self.spread:.3f})"
        if self.effective_dims < DEGENERATE_EFFECTIVE_DIMS:
            return f"its vectors vary along only {self.effective_dims:.1f} directions"
        if 1 - self.median < DEGENERATE_SPREAD:
            return "its vectors are nearly all alike once their dominant directions are set aside"
        return None


def next_estimate_at(current: Calibration | None) -> int:
    """How many stored vectors of a model call for its next scale: the first
    CALIBRATION_MIN_VECTORS, then twice those the current one was made from (a scale
    made from the reference questions and fewer of the cache's own: at the first)."""
    if current is None or not current.ready:
        return CALIBRATION_MIN_VECTORS
    return max(CALIBRATION_MIN_VECTORS, 2 * current.vectors)


def flaw(scale: Calibration) -> str | None:
    """What makes a kept scale impossible (a damaged or edited row), or None. A scale
    estimate() made has a median in [-1, 1) (a cosine), unit directions (lengths only:
    D dot products, where orthogonality would cost D^2 on every ask), offsets (the
    projections of a mean of unit vectors) within [-1, 1], shares within [0, 1], and no
    more of the cache's distinct vectors than it counted."""
    if not scale.ready:
        return None
    if not -1.0 <= scale.median < 1.0:
        return f"median {scale.median:g} outside [-1, 1)"
    if not (0.0 <= scale.spread <= 2.0 and 0.0 <= scale.identical <= 1.0 and 0.0 <= scale.effective_dims <= scale.dims):
        return "spread, share of identical pairs or effective dimensions out of range"
    if any(abs(p) > 1.0 + 1e-4 for p in scale.offsets) or len(scale.offsets) != len(scale.directions):
        return "offsets out of range"
    if scale.reference < 0 or scale.distinct < 0 or scale.distinct > scale.vectors:
        return "counts that do not add up"
    if scale.reference == 0 and scale.vectors < CALIBRATION_MIN_VECTORS:
        return f"made from {scale.vectors} vectors alone, fewer than {CALIBRATION_MIN_VECTORS}"
    if any(abs(sum(map(mul, row, row)) - 1.0) > 1e-3 for row in scale.directions):
        return "directions that are not unit vectors"
    return None


def directions_for(dims: int) -> int:
    return max(1, round(dims / 100))


def estimate(sample: Any, vectors: int, checked_at: int, reference: int = 0) -> Calibration:
    """The scale from a sample of stored unit vectors, rows of a matrix or a list of
    them (numpy: an estimate is rare); `reference` of them are the reference questions'."""
    import numpy as np

    x = np.asarray(sample, dtype=np.float64)
    count, dims = x.shape
    x = x[_canonical_order(x)]  # the same vectors in any order give the same scale (pairs by position)
    mean = x.mean(axis=0)
    centred = x - mean
    # A quarter of the sample at most: removing as many directions as there are vectors
    # would leave every vector equal to the mean (a 3,072-dim model at its first 32).
    d = min(directions_for(dims), max(1, count // 4))
    if count < dims:  # the small Gram matrix has the same nonzero eigenvalues: 50x faster at 32 x 768
        eigenvalues, gram_vectors = np.linalg.eigh(centred @ centred.T)
        top = (centred.T @ gram_vectors[:, ::-1][:, :d]).T
        lengths = np.linalg.norm(top, axis=1, keepdims=True)
        top = np.divide(top, lengths, out=np.zeros_like(top), where=lengths > 1e-12)  # D x dims, orthonormal
    else:
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
        top = eigenvectors[:, ::-1][:, :d].T  # D x dims, orthonormal
    offsets = top @ mean
    rng = np.random.default_rng(0)  # the same sample gives the same scale
    first, second = rng.integers(0, count, (2, CALIBRATION_PAIRS))
    distinct = first != second
    first, second = first[distinct], second[distinct]
    # Per vector first (its projections, its |z|^2), then per pair: no pair gathers whole vectors.
    raw = (x @ x.T)[first, second] if count <= 512 else np.einsum("ij,ij->i", x[first], x[second])
    a = x @ top.T - offsets
    squared = 1 - (a**2).sum(axis=1) - 2 * a @ offsets
    dot = raw - (a[first] * a[second]).sum(axis=1) - (a[first] + a[second]) @ offsets
    calibrated = dot / np.sqrt(np.maximum(squared[first] * squared[second], 1e-12))
    positive = np.clip(eigenvalues, 0, None)
    effective = float(positive.sum() ** 2 / max((positive**2).sum(), 1e-30))
    return Calibration(
        dims=dims, vectors=vectors, checked_at=checked_at,
        directions=tuple(array("f", row.astype(np.float32).tobytes()) for row in top),
        offsets=tuple(float(v) for v in offsets),
        median=float(np.median(calibrated)) if len(calibrated) else 0.0,
        spread=float(1 - np.median(raw)) if len(raw) else 0.0,
        effective_dims=effective,
        identical=float((raw > _IDENTICAL).mean()) if len(raw) else 1.0,
        reference=reference, distinct=count - reference,
    )


# The cold start (issue 22): a model's first scale is made from the vectors of the
# reference questions shipped with semcache (reference_questions.txt), embedded once; each
# later one from those and the cache's own distinct vectors together, until the cache has
# REFERENCE_TAKEOVER distinct vectors of its own, then from its own alone. Measured on
# CLINC150 (bench/cold_start.py, docs/calibration.md): the reference alone serves a narrow
# cache too freely; mixed with the cache's own vectors, it stays as safe as a scale made
# beforehand from 2,048 of the cache's data; kept on past 128 of the cache's own, it
# costs the full 22,500-query run wrong answers (0.44% -> 0.48% at 256, 0.49% forever).
REFERENCE_TAKEOVER = 128
REFERENCE_LEAST = 64  # usable reference vectors a model must give for them to be used


def distinct_rows(x: Any, limit: int) -> Any:
    """The first `limit` distinct rows of a matrix, in their order: the same text asked in
    many scopes is one vector, and must count once (a flood of one question in a thousand
    namespaces would otherwise read as a model whose vectors are all alike)."""
    import numpy as np

    if not len(x):
        return x
    _, first = np.unique(np.round(x, 5), axis=0, return_index=True)
    return x[np.sort(first)][:limit]


def scale_sample(reference: Any, own: Any) -> tuple[Any, int]:
    """What a scale is made from, and how many of its rows are the reference's: the
    reference vectors (or None) and the cache's own distinct vectors (a sample of them)."""
    import numpy as np

    if reference is None or not len(reference) or len(own) >= REFERENCE_TAKEOVER:
        return own, 0
    rows = np.asarray(reference, np.float64)
    return np.vstack([rows, np.asarray(own, np.float64).reshape(-1, rows.shape[1])]), len(rows)


def estimate_from(reference: Any, own: Any, vectors: int, checked_at: int) -> Calibration:
    """The scale from the reference vectors (or None) and a sample of the cache's own
    distinct vectors (at least one of them non-empty). The reference must not hide a
    model that fails on the cache's own questions: with CALIBRATION_MIN_VECTORS of them,
    their own degeneracy decides."""
    sample, from_reference = scale_sample(reference, own)
    scale = estimate(sample, vectors, checked_at, from_reference)
    if from_reference and len(own) >= CALIBRATION_MIN_VECTORS:
        alone = estimate(own, vectors, checked_at)
        if alone.problem is not None:
            return alone
    return scale


def _canonical_order(x: Any) -> Any:
    """The rows sorted by their values (the first columns decide unless they tie)."""
    import numpy as np

    order = np.lexsort(x[:, :3].T[::-1])
    first = x[order, :3]
    if len(x) > 1 and np.all(first[1:] == first[:-1], axis=1).any():  # a tie: every column
        order = np.lexsort(x.T[::-1])
    return order


def _bounded(score: float) -> float:
    """A calibrated score within [-1, 1]; NaN (never expected) as the worst."""
    return min(1.0, score) if score >= -1.0 else -1.0


def projections(vector: Sequence[float], directions: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """u_k . vector for each direction: what the calibrated score needs of a vector."""
    if use_numpy(0):
        import numpy as np

        return tuple((np.asarray(directions, dtype=np.float64) @ np.asarray(vector, dtype=np.float64)).tolist())
    values = [float(x) for x in vector]
    return tuple(sum(map(mul, values, direction)) for direction in directions)


def calibrated(cosine: float, query: Sequence[float], stored: Sequence[float], scale: Calibration) -> float:
    """The calibrated score of a pair from its raw cosine and both vectors' projections."""
    a = [q - p for q, p in zip(query, scale.offsets, strict=True)]
    b = [s - p for s, p in zip(stored, scale.offsets, strict=True)]
    dot = cosine - sum(map(mul, a, b)) - sum(p * (x + y) for p, x, y in zip(scale.offsets, a, b, strict=True))
    norm_a = 1 - sum(map(mul, a, a)) - 2 * sum(map(mul, scale.offsets, a))
    norm_b = 1 - sum(map(mul, b, b)) - 2 * sum(map(mul, scale.offsets, b))
    c = dot / math.sqrt(max(norm_a * norm_b, 1e-24))
    return _bounded((c - scale.median) / (1 - scale.median))


def calibrated_many(cosines: Any, query: Any, stored: Any, scale: Calibration) -> Any:
    """`calibrated` for many stored vectors at once (numpy arrays: cosines (k,),
    query projections (D,), stored projections (k, D)): replay's simulation."""
    import numpy as np

    offsets = np.asarray(scale.offsets, dtype=np.float64)
    a = np.asarray(query, dtype=np.float64) - offsets
    b = np.asarray(stored, dtype=np.float64) - offsets
    dot = np.asarray(cosines, dtype=np.float64) - b @ a - (b + a) @ offsets
    norms = (1 - a @ a - 2 * offsets @ a) * (1 - (b * b).sum(axis=1) - 2 * b @ offsets)
    c = dot / np.sqrt(np.maximum(norms, 1e-24))
    return np.clip(np.nan_to_num((c - scale.median) / (1 - scale.median), nan=-1.0), -1.0, 1.0)
