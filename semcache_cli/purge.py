"""Deleting entries by selector, bounding the entry count, trimming the request log.

Safe beside running `ask` processes: ids are chosen first, then deleted in short
batches, each delete re-checking the selector, so an entry that an `ask` refreshed in
between (an upsert keeps its id) is not lost because its old state matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semcache_cli.selector import Selector
from semcache_cli.store import Store

BATCH = 500


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
    bytes_in_use: int  # pages holding data; --vacuum shrinks the file to about this
    max_bytes: int | None = None

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


MAX_SIZE_ROUNDS = 4
ROW_HEADER = 40  # bytes of record header and rowid a row costs beside its values


def _lru_sizes(store: Store) -> list[tuple[int, int]]:
    """(id, bytes of data) of every entry and its vector, least recently used first."""
    return [(r[0], r[1]) for r in store.conn.execute(
        f"""SELECT e.id, length(e.scope) + length(e.exact_key) + length(CAST(e.query AS BLOB))
                + length(CAST(e.response AS BLOB)) + coalesce(length(CAST(e.system AS BLOB)), 0)
                + length(e.options) + coalesce(length(e.format), 0) + coalesce(length(e.metadata), 0)
                + coalesce(length(v.vector) + length(v.scope), 0) + {2 * ROW_HEADER:d}
            FROM entries e LEFT JOIN entry_vectors v ON v.entry_id = e.id
            ORDER BY coalesce(e.last_hit_at, e.created_at), e.created_at, e.id"""
    )]


def _log_data_bytes(store: Store) -> int:
    return int(store.conn.execute(
        f"""SELECT coalesce(sum(coalesce(length(scope), 0) + coalesce(length(exact_key), 0)
                + coalesce(length(CAST(error AS BLOB)), 0) + {ROW_HEADER + 80:d}), 0) FROM requests"""
    ).fetchone()[0])


def size_excess_ids(store: Store, max_bytes: int, exclude: set[int]) -> list[int]:
    """Least recently used entries whose removal (with the excluded ones, which go
    anyway) brings the bytes in use under max_bytes. Each entry is charged its data
    scaled by this file's own ratio of pages in use to data, so index entries and part-
    full pages are shared out in proportion; the request log keeps its share."""
    used = used_bytes(store)
    excess = used - max_bytes
    if excess <= 0:
        return []
    sizes = _lru_sizes(store)
    scale = used / max(1, sum(size for _, size in sizes) + _log_data_bytes(store))
    freed = scale * sum(size for entry_id, size in sizes if entry_id in exclude)
    chosen: list[int] = []
    for entry_id, size in sizes:
        if freed >= excess:
            break
        if entry_id not in exclude:
            chosen.append(entry_id)
            freed += scale * size
    return chosen


def used_bytes(store: Store) -> int:
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
    max_bytes: int | None = None

    @property
    def deletes_everything(self) -> bool:
        return self.total > 0 and len(self.selected) + len(self.evict) == self.total


def plan(store: Store, selector: Selector, now: float, max_entries: int | None = None,
         max_bytes: int | None = None) -> Plan:
    selected = matching_ids(store, selector, now)
    evict = lru_excess_ids(store, max_entries, set(selected)) if max_entries is not None else []
    if max_bytes is not None:
        evict += size_excess_ids(store, max_bytes, {*selected, *evict})
    return Plan(selected, evict, count_entries(store), max_bytes)


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
        return PurgeReport(True, len(selected), 0, len(evict), chosen.total - len(selected) - len(evict), 0, 0, False,
                           used_bytes(store), chosen.max_bytes)

    before = used_bytes(store)
    where, params = selector.where(now)
    deleted = _delete_batches(store, selected, where, params)
    # LRU eviction re-checks that the entry was not used since it was chosen.
    evicted = _delete_batches(store, evict, "coalesce(last_hit_at, created_at) <= ?", [now])
    if chosen.max_bytes is not None:
        evicted += _settle_size(store, chosen, now)
    if deleted or evicted:
        store.compact_search()
    log_rows = 0
    if log_older_than is not None:
        with store.transaction():
            log_rows = store.conn.execute("DELETE FROM requests WHERE at < ?", (now - log_older_than,)).rowcount
    if vacuum:
        store.conn.execute("VACUUM")
    freed = max(0, before - used_bytes(store))
    return PurgeReport(False, len(selected), deleted, evicted, count_entries(store), freed, log_rows, vacuum,
                       used_bytes(store), chosen.max_bytes)


def _settle_size(store: Store, chosen: Plan, now: float) -> int:
    """The size plan is an estimate; pages left part-full can keep the file over the
    bound. Evict further by measurement, a few rounds at most, and never the last
    entries unless the user already agreed to delete everything."""
    evicted = 0
    for _ in range(MAX_SIZE_ROUNDS):
        more = size_excess_ids(store, chosen.max_bytes or 0, set())
        remaining = count_entries(store)
        if not more or (len(more) >= remaining and not chosen.deletes_everything):
            break
        evicted += _delete_batches(store, more, "coalesce(last_hit_at, created_at) <= ?", [now])
    return evicted


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
