"""Deleting entries by selector, bounding the entry count, trimming the request log.

Safe beside running `ask` processes: ids are chosen first, then deleted in short
batches, each delete re-checking the selector, so an entry that an `ask` refreshed in
between (an upsert keeps its id) is not lost because its old state matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from semcache_cli import policy
from semcache_cli.store import Store

BATCH = 500


@dataclass
class Selector:
    expired: bool = False
    older_than: float | None = None  # seconds
    namespace: str | None = None
    model: str | None = None
    embed_model: str | None = None
    ids: list[int] = field(default_factory=list)
    grep: str | None = None
    all: bool = False

    def is_empty(self) -> bool:
        return not (self.expired or self.older_than is not None or self.namespace or self.model
                    or self.embed_model or self.ids or self.grep or self.all)

    def where(self, now: float) -> tuple[str, list[Any]]:
        """A WHERE clause of fixed fragments; every user value is a bound parameter."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.expired:
            clauses.append("expires_at IS NOT NULL AND expires_at <= ?")
            params.append(now)
        if self.older_than is not None:
            clauses.append("created_at < ?")
            params.append(now - self.older_than)
        if self.namespace:
            clauses.append("namespace = ?")
            params.append(self.namespace)
        if self.model:
            clauses.append("model = ?")
            params.append(policy.canonical_model(self.model))
        if self.embed_model:
            clauses.append("embed_model = ?")
            params.append(policy.canonical_model(self.embed_model))
        if self.ids:
            clauses.append(f"id IN ({', '.join('?' for _ in self.ids)})")
            params.extend(self.ids)
        if self.grep:
            clauses.append("(instr(lower(query), lower(?)) > 0 OR instr(lower(response), lower(?)) > 0)")
            params.extend([self.grep, self.grep])
        return " AND ".join(f"({c})" for c in clauses) or "1", params


@dataclass
class PurgeReport:
    dry_run: bool
    matched: int
    deleted: int
    evicted: int
    remaining: int
    bytes_freed: int
    log_rows_deleted: int
    vacuumed: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def count_entries(store: Store) -> int:
    return int(store.conn.execute("SELECT count(*) FROM entries").fetchone()[0])


def matching_ids(store: Store, selector: Selector, now: float) -> list[int]:
    if selector.is_empty():
        return []
    where, params = selector.where(now)
    return [r[0] for r in store.conn.execute(f"SELECT id FROM entries WHERE {where} ORDER BY id", params)]


def lru_excess_ids(store: Store, max_entries: int, exclude: set[int]) -> list[int]:
    """Least recently used entries (last hit, then creation) beyond max_entries."""
    rows = [r[0] for r in store.conn.execute(
        "SELECT id FROM entries ORDER BY coalesce(last_hit_at, created_at) DESC, created_at DESC, id DESC"
    ) if r[0] not in exclude]
    return rows[max_entries:]


def _used_bytes(store: Store) -> int:
    conn = store.conn
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


@dataclass
class Plan:
    """What a purge would delete, chosen once and shown to the confirmation step."""

    selected: list[int]
    evict: list[int]
    total: int

    @property
    def deletes_everything(self) -> bool:
        return self.total > 0 and len(self.selected) + len(self.evict) == self.total


def plan(store: Store, selector: Selector, now: float, max_entries: int | None = None) -> Plan:
    selected = matching_ids(store, selector, now)
    evict = lru_excess_ids(store, max_entries, set(selected)) if max_entries is not None else []
    return Plan(selected, evict, count_entries(store))


def purge(
    store: Store,
    selector: Selector,
    now: float,
    chosen: Plan,
    *,
    log_older_than: float | None = None,
    dry_run: bool = False,
    vacuum: bool = False,
) -> PurgeReport:
    selected, evict = chosen.selected, chosen.evict
    if dry_run:
        return PurgeReport(True, len(selected), 0, len(evict), chosen.total - len(selected) - len(evict), 0, 0, False)

    before = _used_bytes(store)
    where, params = selector.where(now)
    deleted = _delete_batches(store, selected, where, params)
    # LRU eviction re-checks that the entry was not used since it was chosen.
    evicted = _delete_batches(store, evict, "coalesce(last_hit_at, created_at) <= ?", [now])
    log_rows = 0
    if log_older_than is not None:
        with store.transaction():
            log_rows = store.conn.execute("DELETE FROM requests WHERE at < ?", (now - log_older_than,)).rowcount
    if vacuum:
        store.conn.execute("VACUUM")
    freed = max(0, before - _used_bytes(store))
    return PurgeReport(False, len(selected), deleted, evicted, count_entries(store), freed, log_rows, vacuum)


def _delete_batches(store: Store, ids: list[int], where: str, params: list[Any]) -> int:
    deleted = 0
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        with store.transaction():
            deleted += store.conn.execute(
                f"DELETE FROM entries WHERE id IN ({', '.join('?' for _ in batch)}) AND ({where})",
                [*batch, *params],
            ).rowcount
    return deleted
