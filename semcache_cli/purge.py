"""Deleting entries by selector, bounding the entry count, trimming the request log.

Safe beside running `ask` processes: ids are chosen first, then deleted by the store in
short batches, each re-checking the selector, so an entry that an `ask` refreshed in
between (an upsert keeps its id) is not lost because its old state matched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from semcache_cli.errors import UsageError
from semcache_cli.storage import open_store, scales
from semcache_cli.storage.selector import Selector

if TYPE_CHECKING:
    from semcache_cli.config import Settings
    from semcache_cli.storage.port import Store

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


def names_content(selector: Selector) -> bool:
    """The selector names entries by what they hold (namespace, model, embedding model,
    text, ids) and by nothing else: their request-log rows go with them. One that also
    names a time (--expired, --older-than) or everything leaves the log to
    --log-older-than."""
    return bool(selector.namespace or selector.model or selector.embed_model or selector.grep or selector.ids) \
        and not (selector.expired or selector.live or selector.older_than is not None or selector.all
                 or selector.unused_since is not None)


def lru_excess_ids(store: Store, max_entries: int, exclude: set[int]) -> list[int]:
    """Least recently used entries (last hit, then creation) beyond max_entries."""
    return [entry_id for entry_id in store.lru_ids() if entry_id not in exclude][max_entries:]


def size_excess_ids(sizes: list[tuple[int, int]], excess: int, gone: set[int]) -> list[int]:
    """Least recently used entries, beyond those going anyway, whose sizes (`sizes`, in
    LRU order, in the units of used_bytes) add up to `excess`: the fewest that bring the
    store under its bound. The sizes come from the data, so the real run deletes exactly
    what its dry run listed, and a second run finds the store under the bound."""
    chosen: list[int] = []
    for entry_id, size in sizes:
        if excess <= 0:
            break
        if entry_id not in gone:
            chosen.append(entry_id)
            excess -= size
    return chosen


@dataclass
class Plan:
    """What a purge would delete, chosen once and shown to the confirmation step, with
    the bytes in use now and what deleting it (and the log rows) takes off them."""

    selected: list[int]
    evict: list[int]
    total: int
    max_bytes: int | None = None
    used: int = 0
    freed: int = 0

    @property
    def deletes_everything(self) -> bool:
        return self.total > 0 and len(self.selected) + len(self.evict) == self.total


def _kb(count: int) -> str:
    return f"{count / 1000:,.1f} KB"


def plan(store: Store, selector: Selector, now: float, max_entries: int | None = None,
         max_bytes: int | None = None, log_before: float | None = None) -> Plan:
    """The entries a purge deletes. A size bound that deleting every entry (and the log
    rows that go) would still not meet is refused here, before anything is deleted: the
    rest is the schema, the request log and the reference questions' vectors, which
    eviction cannot shrink."""
    selected = store.select_ids(selector, now) if not selector.is_empty() else []
    evict = lru_excess_ids(store, max_entries, set(selected)) if max_entries is not None else []
    used = store.used_bytes()
    # every entry's size, in LRU order: only when something goes or a bound is set (a
    # nightly --expired that matches nothing reads no more than the count)
    sizes = store.entry_sizes() if selected or evict or max_bytes is not None else []
    gone = {*selected, *evict}
    log_freed = store.log_bytes(log_before) if log_before is not None else 0
    freed = log_freed + sum(size for entry_id, size in sizes if entry_id in gone)
    if max_bytes is not None and used - freed > max_bytes:
        floor = used - log_freed - sum(size for _, size in sizes)
        if floor > max_bytes:
            raise UsageError(
                f"--max-size {_kb(max_bytes)} cannot be met: with no entries at all the cache would still take "
                f"{_kb(floor)} (the schema, the request log, the reference questions' vectors); nothing was "
                "deleted. Give a larger bound, or trim the request log (--log-older-than)")
        more = size_excess_ids(sizes, used - freed - max_bytes, gone)
        chosen_more = set(more)
        freed += sum(size for entry_id, size in sizes if entry_id in chosen_more)
        evict += more
    return Plan(selected, evict, store.count(), max_bytes, used, freed)


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
    if dry_run:  # the figures the real run reports, unless the store changes in between
        log_rows = store.count_log_before(now - log_older_than) if log_older_than is not None else 0
        if names_content(selector):
            log_rows += store.delete_log_of(selector, selected, now, dry_run=True)
        return PurgeReport(True, len(selected), 0, len(evict), chosen.total - len(selected) - len(evict),
                           chosen.freed, log_rows, False, chosen.used - chosen.freed, chosen.max_bytes)

    before, groups = chosen.used, store.vector_groups()
    deleted = store.delete(selected, selector, now)
    # LRU eviction re-checks that the entry was not used since it was chosen.
    unused = Selector(unused_since=now)
    evicted = store.delete(evict, unused, now)
    if deleted or evicted:
        store.compact()
        scales.shrunk(store, groups)
    # What a content selector names goes from the request log too: a question purged by
    # --grep or --namespace must not stay readable there (replay --from-log).
    log_rows = store.delete_log_of(selector, selected, now) if names_content(selector) else 0
    log_rows += store.delete_log_before(now - log_older_than) if log_older_than is not None else 0
    if vacuum:
        store.vacuum()
    if deleted or evicted or log_rows:
        store.checkpoint()
    used = store.used_bytes()
    return PurgeReport(False, len(selected), deleted, evicted, store.count(), max(0, before - used), log_rows, vacuum,
                       used, chosen.max_bytes)


def run(settings: Settings, selector: Selector, *, max_entries: int | None, max_bytes: int | None,
        log_older_than: float | None, dry_run: bool, vacuum: bool, confirm_all: Callable[[int, str], bool],
        warn: Callable[[str], None]) -> PurgeReport | None:
    """One `semcache purge`: plan, have `confirm_all(count, location)` approve deleting
    every entry (False: the user said no, and nothing is done: None; it raises when it
    cannot ask), delete. A dry run only reads. Ages and expiry are judged on the store's
    clock: a client whose clock is days fast deletes no live entry of a shared store."""
    with open_store(settings, warn, read_only=dry_run) as store:
        now = store.now()
        log_before = now - log_older_than if log_older_than is not None else None
        chosen = plan(store, selector, now, max_entries, max_bytes, log_before)
        if chosen.deletes_everything and not dry_run and not confirm_all(chosen.total, store.location):
            return None
        return purge(store, selector, now, chosen, log_older_than=log_older_than, dry_run=dry_run, vacuum=vacuum)
