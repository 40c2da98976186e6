"""Deleting entries by selector, bounding the entry count, trimming the request log.

Safe beside running `ask` processes: ids are chosen first, then deleted by the store in
short batches, each re-checking the selector, so an entry that an `ask` refreshed in
between (an upsert keeps its id) is not lost because its old state matched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from semcache_cli.storage import open_store, scales
from semcache_cli.storage.selector import Selector

if TYPE_CHECKING:
    from semcache_cli.config import Settings
    from semcache_cli.storage.port import Store

MAX_SIZE_ROUNDS = 4


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
    bytes_in_use: int  # what the data takes; --vacuum shrinks the file to about this
    max_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lru_excess_ids(store: Store, max_entries: int, exclude: set[int]) -> list[int]:
    """Least recently used entries (last hit, then creation) beyond max_entries."""
    return [entry_id for entry_id in store.lru_ids() if entry_id not in exclude][max_entries:]


def size_excess_ids(store: Store, max_bytes: int, exclude: set[int]) -> list[int]:
    """Least recently used entries whose removal (with the excluded ones, which go
    anyway) brings the bytes in use under max_bytes. Each entry is charged its data
    scaled by the store's own ratio of bytes in use to data, so index entries and part-
    full pages are shared out in proportion; the request log keeps its share."""
    used = store.used_bytes()
    excess = used - max_bytes
    if excess <= 0:
        return []
    sizes = store.entry_sizes()
    scale = used / max(1, sum(size for _, size in sizes) + store.log_bytes())
    freed = scale * sum(size for entry_id, size in sizes if entry_id in exclude)
    chosen: list[int] = []
    for entry_id, size in sizes:
        if freed >= excess:
            break
        if entry_id not in exclude:
            chosen.append(entry_id)
            freed += scale * size
    return chosen


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
    selected = store.select_ids(selector, now) if not selector.is_empty() else []
    evict = lru_excess_ids(store, max_entries, set(selected)) if max_entries is not None else []
    if max_bytes is not None:
        evict += size_excess_ids(store, max_bytes, {*selected, *evict})
    return Plan(selected, evict, store.count(), max_bytes)


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
                           store.used_bytes(), chosen.max_bytes)

    before, groups = store.used_bytes(), store.vector_groups()
    deleted = store.delete(selected, selector, now)
    # LRU eviction re-checks that the entry was not used since it was chosen.
    unused = Selector(unused_since=now)
    evicted = store.delete(evict, unused, now)
    if chosen.max_bytes is not None:
        evicted += _settle_size(store, chosen, now)
    if deleted or evicted:
        store.compact()
        scales.shrunk(store, groups)
    log_rows = store.delete_log_before(now - log_older_than) if log_older_than is not None else 0
    if vacuum:
        store.vacuum()
    if deleted or evicted or log_rows:
        store.checkpoint()
    used = store.used_bytes()
    return PurgeReport(False, len(selected), deleted, evicted, store.count(), max(0, before - used), log_rows, vacuum,
                       used, chosen.max_bytes)


def _settle_size(store: Store, chosen: Plan, now: float) -> int:
    """The size plan is an estimate; pages left part-full can keep the store over the
    bound. Evict further by measurement, a few rounds at most, and never the last
    entries unless the user already agreed to delete everything."""
    evicted = 0
    for _ in range(MAX_SIZE_ROUNDS):
        more = size_excess_ids(store, chosen.max_bytes or 0, set())
        remaining = store.count()
        if not more or (len(more) >= remaining and not chosen.deletes_everything):
            break
        evicted += store.delete(more, Selector(unused_since=now), now)
    return evicted


def run(settings: Settings, selector: Selector, now: float, *, max_entries: int | None, max_bytes: int | None,
        log_older_than: float | None, dry_run: bool, vacuum: bool, confirm_all: Callable[[int, str], bool],
        warn: Callable[[str], None]) -> PurgeReport | None:
    """One `semcache purge`: plan, have `confirm_all(count, location)` approve deleting
    every entry (False: the user said no, and nothing is done: None; it raises when it
    cannot ask), delete. A dry run only reads."""
    with open_store(settings, warn, read_only=dry_run) as store:
        chosen = plan(store, selector, now, max_entries, max_bytes)
        if chosen.deletes_everything and not dry_run and not confirm_all(chosen.total, store.location):
            return None
        return purge(store, selector, now, chosen, log_older_than=log_older_than, dry_run=dry_run, vacuum=vacuum)
