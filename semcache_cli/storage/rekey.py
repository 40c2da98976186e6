"""Exact keys made again from the stored questions, when the exact layer's normalisation
(policy.normalise) changes: one migration step, the same for both backends.

An entry's `query` is the text its answer was made for (a store over an existing key
writes the new asker's question with the new answer), so its key made again names what
the answer answers. Where the old normalisation merged two different questions, the
entry keeps the key of its own question, and the other question misses from now on.
Two entries that end up with the same key in a scope would be one question stored
twice: the newest answer is kept, as a store over an existing key keeps it.
"""

from __future__ import annotations

from typing import Any

from semcache_cli import policy

BATCH = 2_000  # rows read, or rows named in one statement


def run(conn: Any, entries: str, mark: str) -> tuple[int, int]:
    """Give every entry of the table `entries` the key its question has now, inside the
    caller's transaction. `conn`: a sqlite3 or psycopg connection; `mark`: its parameter
    placeholder. Returns (entries whose key changed, duplicates removed)."""
    moved: dict[int, tuple[str, str, float, str]] = {}  # id -> (scope, new key, created_at, old key)
    last = 0
    while rows := conn.execute(f"SELECT id, scope, exact_key, query, created_at FROM {entries} "
                               f"WHERE id > {mark} ORDER BY id LIMIT {BATCH}", (last,)).fetchall():
        last = rows[-1][0]
        for entry_id, scope, key, query, created_at in rows:
            new = policy.exact_key(query)
            if new != key:
                moved[entry_id] = (scope, new, created_at, key)
    if not moved:
        return 0, 0

    # Who holds each new key once all have moved: the moved entries, and entries that
    # keep a key one of them moves to.
    holders: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for entry_id, (scope, new, created_at, _) in moved.items():
        holders.setdefault((scope, new), []).append((created_at, entry_id))
    keys_of: dict[str, list[str]] = {}
    for scope, new in holders:
        keys_of.setdefault(scope, []).append(new)
    for scope, keys in keys_of.items():  # a scope and a list of keys: a search of the unique index
        for start in range(0, len(keys), BATCH):
            batch = keys[start:start + BATCH]
            for entry_id, key, created_at in conn.execute(
                    f"SELECT id, exact_key, created_at FROM {entries} WHERE scope = {mark} "
                    f"AND exact_key IN ({', '.join(mark for _ in batch)})", [scope, *batch]).fetchall():
                if entry_id not in moved:
                    holders[(scope, key)].append((created_at, entry_id))
    dropped = [entry_id for held in holders.values() if len(held) > 1 for _, entry_id in sorted(held)[:-1]]
    for entry_id in dropped:
        moved.pop(entry_id, None)
    _each(conn, f"DELETE FROM {entries} WHERE id IN", dropped, mark)

    # A unique index is checked row by row: an entry whose old key is another's new one
    # moves out of the way first.
    targets = {(scope, new) for scope, new, _, _ in moved.values()}
    blocking = [entry_id for entry_id, (scope, _, _, old) in moved.items() if (scope, old) in targets]
    _each(conn, f"UPDATE {entries} SET exact_key = 'moving:' || id WHERE id IN", blocking, mark)
    conn.cursor().executemany(f"UPDATE {entries} SET exact_key = {mark} WHERE id = {mark}",
                              [(new, entry_id) for entry_id, (_, new, _, _) in moved.items()])
    return len(moved), len(dropped)


def _each(conn: Any, statement: str, ids: list[int], mark: str) -> None:
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        conn.execute(f"{statement} ({', '.join(mark for _ in batch)})", batch)
