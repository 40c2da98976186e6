"""Each embedding model's calibrated scale (vectors.Calibration), estimated from a
store's own vectors through the port: when a cache reaches CALIBRATION_MIN_VECTORS
vectors of a model, each time their number doubles (or halves after a purge), after a
migration that brought the table, and on demand (`semcache calibrate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semcache_cli import vectors

if TYPE_CHECKING:
    from semcache_cli.storage.models import VectorGroup
    from semcache_cli.storage.port import Store


def cold(dims: int, count: int, checked_at: int) -> vectors.Calibration:
    """The state of a model with too few vectors for a scale: no semantic hits yet."""
    return vectors.Calibration(dims, count, checked_at, (), (), 0.0, 0.0, 0.0, 0.0)


def estimated(store: Store, embed_model: str, dims: int, checked_at: int, count: int) -> vectors.Calibration:
    """The model's scale from its `count` stored vectors now, or its cold state."""
    if count < vectors.CALIBRATION_MIN_VECTORS:
        return cold(dims, count, checked_at)
    return vectors.estimate(store.sample_vectors(embed_model, dims, vectors.CALIBRATION_SAMPLE), count, checked_at)


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
        })
    return rows


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
