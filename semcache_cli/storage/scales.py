"""Each embedding model's calibrated scale (vectors.Calibration), estimated through the
port from the vectors of the reference questions shipped with semcache (embedded once
per model, kept apart from entries) and the store's own distinct vectors: at the first
semantic lookup of a model, when the cache reaches CALIBRATION_MIN_VECTORS vectors of
it, each time their number doubles (or halves after a purge), after a migration that
brought the table, and on demand (`semcache calibrate`). Without reference vectors (the
embedding model failed on them) the cache's own vectors alone, from the first
CALIBRATION_MIN_VECTORS, as before."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semcache_cli import vectors

REFERENCE_FILE = Path(__file__).resolve().parents[1] / "reference_questions.txt"

if TYPE_CHECKING:
    from semcache_cli.storage.models import VectorGroup
    from semcache_cli.storage.port import Store


def cold(dims: int, count: int, checked_at: int) -> vectors.Calibration:
    """The state of a model with too few vectors for a scale: no semantic hits yet."""
    return vectors.Calibration(dims, count, checked_at, (), (), 0.0, 0.0, 0.0, 0.0)


@functools.cache
def reference_questions() -> tuple[str, ...]:
    """The shipped reference questions: generic questions on many subjects, written for
    semcache, one a line (# comments)."""
    lines = REFERENCE_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def fingerprint() -> str:
    """Which reference questions kept vectors embed: another semcache's are embedded again."""
    import hashlib  # here: its OpenSSL binding costs an ask that reads a kept scale ~4 ms

    return hashlib.sha256("\n".join(reference_questions()).encode()).hexdigest()[:16]


def reference_rows(store: Store, embed_model: str, dims: int) -> Any:
    """The model's kept reference vectors as a matrix, or None: none kept, kept for other
    questions, or not readable as unit vectors of these dims (then embedded again)."""
    import numpy as np

    kept = store.reference_vectors(embed_model, dims)
    if kept is None or kept[0] != fingerprint() or not kept[1] or len(kept[1]) % (4 * dims):
        return None
    rows = np.frombuffer(kept[1], dtype=vectors.DTYPE).reshape(-1, dims).astype(np.float64)
    lengths = np.linalg.norm(rows, axis=1)
    if len(rows) < vectors.REFERENCE_LEAST or not np.all(np.abs(lengths - 1) < 1e-3):
        return None
    return rows


def reference_matrix(embedded: list[Any], dims: int) -> Any:
    """A model's embedding of the reference questions (one reply: a row per question,
    None where unusable) as a matrix of distinct unit rows, or None when it is not one
    (too few usable rows, another dimension): nothing is kept then."""
    import numpy as np

    rows = [np.asarray(row, dtype=np.float64) for row in embedded if row is not None and len(row) == dims]
    if len(rows) < vectors.REFERENCE_LEAST:
        return None
    matrix = np.stack(rows)
    lengths = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(np.isfinite(lengths)) or np.any(lengths == 0):
        return None
    # A model that gives every question one vector keeps one: its scale says it is unusable.
    return vectors.distinct_rows(matrix / lengths, len(matrix))


def keep_reference(store: Store, embed_model: str, dims: int, matrix: Any) -> None:
    """Keep the model's reference vectors, or (None) that it failed on them: no vectors."""
    blob = b"" if matrix is None else matrix.astype(vectors.DTYPE).tobytes()
    store.save_reference_vectors(embed_model, dims, fingerprint(), blob)


def reference_failed(store: Store, embed_model: str, dims: int) -> bool:
    """The model failed on these reference questions before (asks do not try again)."""
    kept = store.reference_vectors(embed_model, dims)
    return kept is not None and kept[0] == fingerprint() and not kept[1]


def own_sample(store: Store, embed_model: str, dims: int) -> Any:
    """Up to CALIBRATION_SAMPLE distinct stored vectors of the model, drawn uniformly."""
    import numpy as np

    drawn = store.sample_vectors(embed_model, dims, 2 * vectors.CALIBRATION_SAMPLE)
    matrix = np.asarray(drawn, dtype=np.float64).reshape(-1, dims)
    return vectors.distinct_rows(matrix, vectors.CALIBRATION_SAMPLE)


def estimated(store: Store, embed_model: str, dims: int, checked_at: int, count: int,
              reference: Any = None) -> vectors.Calibration:
    """The model's scale from its reference vectors (kept, or `reference`) and its
    `count` stored vectors now, or its cold state (no reference vectors, and fewer than
    CALIBRATION_MIN_VECTORS stored)."""
    if reference is None:
        reference = reference_rows(store, embed_model, dims)
    if reference is None and count < vectors.CALIBRATION_MIN_VECTORS:
        return cold(dims, count, checked_at)
    import numpy as np

    own = own_sample(store, embed_model, dims) if count else np.empty((0, dims))
    if reference is None and not len(own):
        return cold(dims, count, checked_at)
    return vectors.estimate_from(reference, own, count, checked_at)


def rebuild(store: Store, embed_model: str, dims: int, checked_at: int, count: int) -> vectors.Calibration:
    """Estimate the model's scale now (or record its cold state), and keep it."""
    scale = estimated(store, embed_model, dims, checked_at, count)
    store.save_calibration(embed_model, scale)
    return scale


def rebuild_all(store: Store) -> list[tuple[str, vectors.Calibration]]:
    """Every model's scale again: after a migration, a bulk load, or on demand."""
    return [(group.embed_model, rebuild(store, group.embed_model, group.dims, group.top_id, group.vectors))
            for group in store.vector_groups()]


def grown(store: Store, embed_model: str, dims: int, entry_id: int,
          current: vectors.Calibration | None) -> vectors.Calibration | None:
    """After a vector of the model was stored as `entry_id`: its scale again when the
    store may have reached the next milestone (the first CALIBRATION_MIN_VECTORS, then
    twice the vectors the scale was made from). Ids grow by one a store, whatever the
    model, so `vectors + (entry_id - checked_at)` bounds the model's count: the store is
    counted only when that bound crosses a milestone, a few times in a cache's life.
    Processes storing at once each keep what they found only if the stored scale is
    still the one they read: a newer estimate is never replaced by an older one."""
    if not _due(current, entry_id):
        return current
    latest = store.calibration(embed_model, dims)  # another process may have made it already
    if _identity(latest) != _identity(current):
        current = latest
        if not _due(current, entry_id):
            return current
    milestone = vectors.next_estimate_at(current)
    count = store.vector_count(embed_model, dims)
    if count >= milestone:
        scale = estimated(store, embed_model, dims, entry_id, count)
    elif current is not None and current.ready:  # not there yet: the bound counts from here, exactly
        scale = current._replace(checked_at=entry_id - (count - current.vectors))
    else:
        scale = cold(dims, count, entry_id)
    if store.advance_calibration(embed_model, scale, current):
        return scale
    return store.calibration(embed_model, dims)  # another process's, made meanwhile


def state(scale: vectors.Calibration | None) -> str:
    """ready, calibrating (no scale yet) or unusable (the model's vectors cannot tell
    questions apart)."""
    if scale is None or not scale.ready:
        return "calibrating"
    return "unusable" if scale.problem is not None else "ready"


def overview(store: Store) -> list[dict[str, Any]]:
    """Every embedding model of the store, with its scale: what stats and calibrate show."""
    rows = []
    for group in store.vector_groups():
        scale = store.calibration(group.embed_model, group.dims)
        made = scale if scale is not None and scale.ready else None
        rows.append({
            "embed_model": group.embed_model, "dims": group.dims, "vectors": group.vectors, "state": state(scale),
            "needed": vectors.CALIBRATION_MIN_VECTORS,
            "estimated_from": made.vectors if made else None,
            "directions": len(made.directions) if made else None,
            "median": round(made.median, 6) if made else None,
            "median_cosine": round(1 - made.spread, 6) if made else None,
            "effective_dims": round(made.effective_dims, 1) if made else None,
            "problem": made.problem if made else None,
            "made_from": made_from(made),
            "degraded": degraded(scale, group.vectors),
        })
    return rows


def made_from(scale: vectors.Calibration | None) -> dict[str, int] | None:
    """What a scale was made from: reference questions and the cache's own vectors."""
    if scale is None or not scale.ready:
        return None
    own = scale.distinct if scale.distinct or scale.reference else min(scale.vectors, vectors.CALIBRATION_SAMPLE)
    return {"reference_questions": scale.reference, "cache_vectors": own}


def degraded(scale: vectors.Calibration | None, count: int) -> str | None:
    """Why the model's scale is less than it should be, in words, or None."""
    if scale is None:
        return "no scale kept (never made, lost, or damaged and refused): the next semantic lookup makes it"
    if not scale.ready:
        return (f"no reference vectors: no semantic hits until {vectors.CALIBRATION_MIN_VECTORS} vectors are stored "
                "(semcache calibrate embeds the reference questions)")
    if scale.problem is not None:
        return f"unusable: {scale.problem}"
    if scale.reference and scale.distinct < vectors.CALIBRATION_MIN_VECTORS:
        return f"made mostly from reference questions ({scale.distinct} of the cache's own vectors)"
    if scale.reference == 0 and scale.distinct and scale.distinct < scale.vectors // 2 \
            and scale.distinct < vectors.CALIBRATION_SAMPLE:
        return f"{scale.vectors - scale.distinct} of {scale.vectors} stored vectors repeat others (each counted once)"
    return None


def _due(current: vectors.Calibration | None, entry_id: int) -> bool:
    """The bound on the model's vectors has reached the next milestone."""
    base, since = (current.vectors, current.checked_at) if current is not None else (0, 0)
    return base + (entry_id - since) >= vectors.next_estimate_at(current)


def _identity(scale: vectors.Calibration | None) -> tuple[int, int] | None:
    return None if scale is None else (scale.vectors, scale.checked_at)


def shrunk(store: Store, before: list[VectorGroup]) -> None:
    """After a purge (`before`: the store's vector groups until then): a model left with
    half the vectors its scale was made from, or fewer, gets a new one, or its cold state
    back (none left: the cold state of an empty cache)."""
    after = {(g.embed_model, g.dims): g for g in store.vector_groups()}
    for group in before:
        scale = store.calibration(group.embed_model, group.dims)
        left = after.get((group.embed_model, group.dims))
        count = left.vectors if left is not None else 0
        if scale is not None and scale.ready and count <= scale.vectors // 2:
            rebuild(store, group.embed_model, group.dims, group.top_id, count)
