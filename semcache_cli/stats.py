"""The figures of `semcache stats`: what is stored, and what the cache did according to
the request log (hits by layer, misses by reason, time and tokens saved, latency, the
similarity picture around the threshold). Plain SQL aggregates; works on an empty file.

Definitions (also in the README):
- hit rate = hits / (hits + misses); bypasses (--no-cache) and errors are counted apart,
  since they never asked the cache a question it could answer.
- median and p95 are nearest-rank percentiles of the logged whole-ask latency.
- near-misses are misses for no_match whose best similarity was within NEAR_MISS_SPAN
  under the threshold.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from semcache_cli import policy
from semcache_cli.store import Store

NEAR_MISS_SPAN = 0.10
BIN_WIDTH = 0.02
TOP_ENTRIES = 5
PATHS = ("exact", "semantic", "model", "miss", "error")


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def _counts(store: Store, column: str) -> dict[str, int]:
    rows = store.conn.execute(f"SELECT coalesce({column}, '(none)'), count(*) FROM entries GROUP BY 1 ORDER BY 2 DESC, 1")
    return {name: n for name, n in rows}


def disk_bytes(store: Store) -> int:
    """The database file plus its write-ahead log, as `du` would count them."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(f"{store.path}{suffix}")
        except OSError:
            pass
    return total


def stored(store: Store, now: float) -> dict[str, Any]:
    total, expired, oldest, newest = store.conn.execute(
        "SELECT count(*), count(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 1 END), "
        "min(created_at), max(created_at) FROM entries", (now,)
    ).fetchone()
    return {
        "total": total, "live": total - expired, "expired": expired,
        "oldest": oldest, "newest": newest,
        "by_namespace": _counts(store, "namespace"),
        "by_model": _counts(store, "model"),
        "by_embed_model": _counts(store, "embed_model"),
    }


def requests(store: Store, since: float | None) -> dict[str, Any]:
    window, params = ("at >= ?", [since]) if since is not None else ("1", [])
    conn = store.conn
    by_path = dict(conn.execute(f"SELECT path, count(*) FROM requests WHERE {window} GROUP BY path", params).fetchall())
    misses_by_reason = dict(conn.execute(
        f"SELECT coalesce(miss_reason, '{policy.NO_MATCH}'), count(*) FROM requests "
        f"WHERE {window} AND path IN ('model', 'miss') AND coalesce(miss_reason, '') != ? GROUP BY 1 ORDER BY 2 DESC, 1",
        [*params, policy.BYPASS],
    ).fetchall())
    bypasses = conn.execute(
        f"SELECT count(*) FROM requests WHERE {window} AND path IN ('model', 'miss') AND miss_reason = ?",
        [*params, policy.BYPASS],
    ).fetchone()[0]
    saved_s, saved_tokens = conn.execute(
        f"SELECT coalesce(sum(saved_s), 0), coalesce(sum(saved_tokens), 0) FROM requests "
        f"WHERE {window} AND path IN ('exact', 'semantic')", params,
    ).fetchone()
    hits = {"exact": by_path.get("exact", 0), "semantic": by_path.get("semantic", 0)}
    hit_total = hits["exact"] + hits["semantic"]
    miss_total = sum(misses_by_reason.values())
    latency = {}
    for path in PATHS:
        values = [r[0] for r in conn.execute(
            f"SELECT latency_ms FROM requests WHERE {window} AND path = ? AND latency_ms IS NOT NULL ORDER BY latency_ms",
            [*params, path],
        )]
        if values:
            latency[path] = {"count": len(values), "median": percentile(values, 50), "p95": percentile(values, 95)}
    return {
        "since": since,
        "asks": sum(by_path.values()),
        "hits": {**hits, "total": hit_total},
        "misses": {"total": miss_total, "by_reason": misses_by_reason},
        "bypasses": bypasses,
        "errors": by_path.get("error", 0),
        "hit_rate": hit_total / (hit_total + miss_total) if hit_total + miss_total else None,
        "time_saved_s": float(saved_s),
        "tokens_saved": int(saved_tokens),
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
    window, params = ("at >= ?", [since]) if since is not None else ("1", [])
    low = threshold - NEAR_MISS_SPAN
    edges = [low + i * BIN_WIDTH for i in range(int((1.0 - low) / BIN_WIDTH + 1e-9) + 1)]
    if edges[-1] < 1.0:
        edges.append(1.0)
    rows = store.conn.execute(
        f"SELECT path, similarity FROM requests WHERE {window} AND similarity >= ? AND ("
        f"path = 'semantic' OR (path IN ('model', 'miss') AND coalesce(miss_reason, '') = ? AND similarity < ?))",
        [*params, low, policy.NO_MATCH, threshold],
    ).fetchall()
    counts = [[0, 0] for _ in edges[:-1]]
    for path, similarity in rows:
        index = min(len(counts) - 1, int((similarity - low) / BIN_WIDTH + 1e-9))
        counts[index][0 if path == "semantic" else 1] += 1
    return [Bin(round(edges[i], 4), round(edges[i + 1], 4), h, m) for i, (h, m) in enumerate(counts)]


def top_entries(store: Store, limit: int = TOP_ENTRIES) -> list[dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT id, hits, query FROM entries WHERE hits > 0 ORDER BY hits DESC, id LIMIT ?", (limit,)
    )
    return [{"id": r[0], "hits": r[1], "query": r[2]} for r in rows]


def collect(store: Store, now: float, since_s: float | None, threshold: float) -> dict[str, Any]:
    since = now - since_s if since_s is not None else None
    return {
        "database": str(store.path),
        "size_bytes": disk_bytes(store),
        "entries": stored(store, now),
        "requests": requests(store, since),
        "similarity": {
            "threshold": threshold,
            "bin_width": BIN_WIDTH,
            "bins": [bin.__dict__ for bin in similarity_bins(store, since, threshold)],
        },
        "top_entries": top_entries(store),
    }
