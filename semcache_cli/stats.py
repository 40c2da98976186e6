"""The figures of `semcache stats`: what is stored, and what the cache did according to
the request log (hits by layer, misses by reason, time and tokens saved, latency, the
similarity picture around the threshold), from the store's aggregates; works on an
empty store.

Definitions (also in docs/stats.md):
- hit rate = hits / (hits + misses); bypasses (--no-cache) and errors are counted apart,
  since they never asked the cache a question it could answer.
- median and p95 are nearest-rank percentiles of the logged whole-ask latency.
- near-misses are misses for no_match whose best similarity was within NEAR_MISS_SPAN
  under the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from semcache_cli.storage import scales

if TYPE_CHECKING:
    from semcache_cli.config import Settings
    from semcache_cli.storage.port import Store


NEAR_MISS_SPAN = 0.10
BIN_WIDTH = 0.02
TOP_ENTRIES = 5
PATHS = ("exact", "semantic", "model", "miss", "error")


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def stored(store: Store, now: float) -> dict[str, Any]:
    counts = store.entry_counts(now)
    return {
        "total": counts.total, "live": counts.total - counts.expired, "expired": counts.expired,
        "oldest": counts.oldest, "newest": counts.newest,
        "by_namespace": counts.by_namespace,
        "by_model": counts.by_model,
        "by_embed_model": counts.by_embed_model,
        "damaged": counts.damaged,  # entries whose stored fields are damaged (a file edited by hand)
        "damaged_ids": list(counts.damaged_ids),  # the first few
    }


def requests(store: Store, since: float | None) -> dict[str, Any]:
    counts = store.request_counts(since)
    by_path = counts.by_path
    hits = {"exact": by_path.get("exact", 0), "semantic": by_path.get("semantic", 0)}
    hit_total = hits["exact"] + hits["semantic"]
    miss_total = sum(counts.misses_by_reason.values())
    latency = {}
    for path in PATHS:
        values = counts.latencies_ms.get(path)
        if values:
            latency[path] = {"count": len(values), "median": percentile(values, 50), "p95": percentile(values, 95)}
    return {
        "since": since,
        "asks": sum(by_path.values()),
        "hits": {**hits, "total": hit_total},
        "misses": {"total": miss_total, "by_reason": counts.misses_by_reason},
        "bypasses": counts.bypasses,
        "errors": by_path.get("error", 0),
        "hit_rate": hit_total / (hit_total + miss_total) if hit_total + miss_total else None,
        "time_saved_s": counts.saved_s,
        "tokens_saved": counts.saved_tokens,
        "latency_ms": latency,
    }


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    hits: int
    near_misses: int


def similarity_bins(store: Store, since: float | None, threshold: float) -> list[Bin]:
    """Semantic hits and no_match near-misses by similarity, in bins whose edges fall on
    the threshold, from NEAR_MISS_SPAN under it up to 1.0."""
    low = threshold - NEAR_MISS_SPAN
    edges = [low + i * BIN_WIDTH for i in range(int((1.0 - low) / BIN_WIDTH + 1e-9) + 1)]
    if edges[-1] < 1.0:
        edges.append(1.0)
    counts = [[0, 0] for _ in edges[:-1]]
    for path, similarity in store.similarity_samples(since, low, threshold):
        index = min(len(counts) - 1, int((similarity - low) / BIN_WIDTH + 1e-9))
        counts[index][0 if path == "semantic" else 1] += 1
    return [Bin(round(edges[i], 4), round(edges[i + 1], 4), h, m) for i, (h, m) in enumerate(counts)]


def report(settings: Settings, since_s: float | None, warn: Callable[[str], None]) -> dict[str, Any]:
    """One `semcache stats`: the figures of the settings' store, as of its own clock."""
    from semcache_cli.storage import open_store

    with open_store(settings, warn, read_only=True) as store:
        figures = collect(store, store.now(), since_s, settings.threshold)
    count, ids = figures["entries"]["damaged"], figures["entries"]["damaged_ids"]
    if count:
        listed = ", ".join(map(str, ids)) + (", ..." if count > len(ids) else "")
        warn(f"{count:,} damaged entr{'y' if count == 1 else 'ies'} in {figures['database']} (entry {listed}): "
             f"counted, but left out of the top entries and dates; "
             f"semcache purge {' '.join(f'--id {i}' for i in ids)} removes {'it' if count == 1 else 'them'}")
    return figures


def collect(store: Store, now: float, since_s: float | None, threshold: float) -> dict[str, Any]:
    since = now - since_s if since_s is not None else None
    return {
        "database": store.location,
        "size_bytes": store.disk_bytes(),
        "entries": stored(store, now),
        "requests": requests(store, since),
        "similarity": {
            "threshold": threshold,
            "bin_width": BIN_WIDTH,
            "bins": [bin.__dict__ for bin in similarity_bins(store, since, threshold)],
        },
        "top_entries": [entry._asdict() for entry in store.top_entries(TOP_ENTRIES)],
        "scales": scales.overview(store),
    }
