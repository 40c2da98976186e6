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
    moved: dict[int, tuple[str, str, float]] = {}  # id -> (scope, new key, created_at)
    last = 0
    while rows := conn.execute(f"SELECT id, scope, exact_key, query, created_at FROM {entries} "
                               f"WHERE id > {mark} ORDER BY id LIMIT {BATCH}", (last,)).fetchall():
        last = rows[-1][0]
        for entry_id, scope, key, query, created_at in rows:
            new = policy.exact_key(query)
            if new != key:
                moved[entry_id] = (scope, new, created_at)
    if not moved:
        return 0, 0

    # Who holds each new key once all have moved: the moved entries, and entries that
    # keep a key one of them moves to.
    holders: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for entry_id, (scope, new, created_at) in moved.items():
        holders.setdefault((scope, new), []).append((created_at, entry_id))
    wanted = list(holders)
    for start in range(0, len(wanted), BATCH):
        batch = wanted[start:start + BATCH]
        pairs = ", ".join(f"({mark}, {mark})" for _ in batch)
        for entry_id, scope, key, created_at in conn.execute(
                f"SELECT id, scope, exact_key, created_at FROM {entries} WHERE (scope, exact_key) IN (VALUES {pairs})",
                [value for pair in batch for value in pair]).fetchall():
            if entry_id not in moved:
                holders[(scope, key)].append((created_at, entry_id))
    dropped = [entry_id for held in holders.values() if len(held) > 1 for _, entry_id in sorted(held)[:-1]]
    for entry_id in dropped:
        moved.pop(entry_id, None)
    _each(conn, f"DELETE FROM {entries} WHERE id IN", dropped, mark)

    # Out of the way first, then to the new keys: a unique index is checked row by row,
    # and one entry's new key may still be another's old one.
    _each(conn, f"UPDATE {entries} SET exact_key = 'moving:' || id WHERE id IN", list(moved), mark)
    conn.cursor().executemany(f"UPDATE {entries} SET exact_key = {mark} WHERE id = {mark}",
                              [(new, entry_id) for entry_id, (_, new, _) in moved.items()])
    return len(moved), len(dropped)


def _each(conn: Any, statement: str, ids: list[int], mark: str) -> None:
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        conn.execute(f"{statement} ({', '.join(mark for _ in batch)})", batch)
