"""Reading the cache for `inspect`: filtered, sorted listings streamed row by row (a
large cache is exported without being loaded into memory), one entry, its vector, and
the explanation of a lookup (--similar), which runs the engine's own code."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from semcache_cli.errors import UsageError
from semcache_cli.storage import open_store
from semcache_cli.storage.models import SORTS, Damaged, Entry
from semcache_cli.storage.selector import Selector

if TYPE_CHECKING:
    from semcache_cli.config import Settings
    from semcache_cli.engine import AskRequest, Explanation
    from semcache_cli.storage.port import Store


def check_sort(sort: str) -> str:
    if sort not in SORTS:
        raise UsageError(f"--sort must be one of {', '.join(SORTS)}, got {sort!r}")
    return sort


def on_store_clock(store: Store, now: float) -> float:
    """A time of this machine's clock on the store's (a shared store's server's), so that
    --expired and --live, and what ask would do, hold whatever this machine's clock says."""
    return now + (store.now() - time.time())


def get_entry(store: Store, entry_id: int) -> tuple[Entry, Sequence[float] | None]:
    """The entry and its vector; a damaged one is an error that says so (a listing shows
    it repaired, or leaves it out, and goes on)."""
    entry = store.get(entry_id)
    if entry is None:
        raise UsageError(f"no entry {entry_id} in {store.location} (semcache inspect lists them)")
    return entry, store.vector_of(entry_id)


def show(settings: Settings, entry_id: int, warn: Callable[[str], None]) -> tuple[Entry, Sequence[float] | None]:
    with open_store(settings, warn, read_only=True) as store:
        return get_entry(store, entry_id)


def listing(settings: Settings, selector: Selector, now: float, sort: str, limit: int, with_vectors: bool,
            warn: Callable[[str], None]) -> Iterator[tuple[Entry, Sequence[float] | None]]:
    """The entries, streamed; the store closes when the listing ends. The sort is checked
    before anything is read, so a bad one prints nothing."""
    check_sort(sort)
    store = open_store(settings, warn, read_only=True)

    def rows() -> Iterator[tuple[Entry, Sequence[float] | None]]:
        damaged = Damaged()
        with store:
            yield from store.entries(selector, on_store_clock(store, now), sort, limit, with_vectors, damaged)
        said = damaged.warning(store.location, "shown")
        if said:
            warn(said)

    return rows()


def explain(settings: Settings, request: AskRequest, limit: int, now: float, with_vectors: bool,
            warn: Callable[[str], None]) -> tuple[Explanation, dict[int, Any]]:
    """What ask would do with the request now, and the candidates' vectors when asked."""
    from semcache_cli.engine import open_engine

    with open_engine(settings, warn=warn, read_only=True) as engine:
        at = on_store_clock(engine.store, now)
        engine.clock = lambda: at
        explanation = engine.explain(request, limit)
        candidates = ([explanation.exact] if explanation.exact else []) + explanation.neighbours
        vectors = {judged.entry.id: engine.store.vector_of(judged.entry.id) for judged in candidates} \
            if with_vectors else {}
        return explanation, vectors
