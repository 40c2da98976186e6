"""Reading the cache for `inspect`: filtered, sorted listings streamed row by row (a
large cache is exported without being loaded into memory), one entry, its vector."""

from __future__ import annotations

from collections.abc import Iterator

from semcache_cli.errors import UsageError
from semcache_cli.selector import Selector
from semcache_cli.store import Entry, Store

SORTS = {
    "newest": "created_at DESC, id DESC",
    "oldest": "created_at ASC, id ASC",
    "hits": "hits DESC, id DESC",
    "last-hit": "last_hit_at IS NULL, last_hit_at DESC, id DESC",
}


def list_entries(
    store: Store, selector: Selector, now: float, sort: str = "newest", limit: int = 0, with_vectors: bool = False
) -> Iterator[tuple[Entry, bytes | None]]:
    """Entries matching the selector, with their vector blob when asked; limit 0 = all."""
    if sort not in SORTS:
        raise UsageError(f"--sort must be one of {', '.join(SORTS)}, got {sort!r}")
    where, params = selector.where(now)
    vector_sql = (", (SELECT vector FROM entry_vectors v WHERE v.entry_id = entries.id) AS vector"
                  if with_vectors else "")
    sql = f"SELECT entries.*{vector_sql} FROM entries WHERE {where} ORDER BY {SORTS[sort]}"
    if limit > 0:
        sql += " LIMIT ?"
        params = [*params, limit]
    for row in store.conn.execute(sql, params):
        data = dict(row)
        vector = data.pop("vector", None)
        yield Entry.from_dict(data), vector


def get_entry(store: Store, entry_id: int) -> tuple[Entry, bytes | None]:
    entry = store.get(entry_id)
    if entry is None:
        raise UsageError(f"no entry {entry_id} in {store.path} (semcache inspect lists them)")
    row = store.conn.execute("SELECT vector FROM entry_vectors WHERE entry_id = ?", (entry_id,)).fetchone()
    return entry, row[0] if row else None
