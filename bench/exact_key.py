"""The exact-key migration (docs/exact-key.md) on a SQLite store of the schema before it,
beside its floor measured in the same run: reading every stored question and making its
new key, the least any migration of the keys must do.

    python bench/exact_key.py                     # 100k entries, a tenth of whose keys change
    python bench/exact_key.py --entries 1000000 --changed 0.5

The store is made by the project's own migrations stopped before the exact-key step, its
entries written with the keys the previous normalisation gave (NFKC, casefold, whitespace
collapsed, every trailing punctuation mark dropped). Medians of --runs runs.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
import unicodedata
from pathlib import Path

from semcache_cli import policy
from semcache_cli.storage import sqlite_schema
from semcache_cli.storage.sqlite import SQLiteStore


def previous_key(query: str) -> str:
    """The exact key before issue 22."""
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", query).casefold()).strip()
    end = len(text)
    while end and (unicodedata.category(text[end - 1]).startswith("P") or text[end - 1] == " "):
        end -= 1
    return hashlib.sha256(text[:end].encode()).hexdigest()[:policy.EXACT_KEY_HEX]


def previous_store(path: Path, entries: int, changed: float) -> None:
    from sqlite_utils import Database

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=16384")
    conn.execute("PRAGMA journal_mode=WAL")
    migrations = sqlite_schema.migration_set()
    names = [m.name for m in migrations.pending(Database(conn, execute_plugins=False))]
    step = next(name for name in names if name.endswith("_exact_keys"))
    migrations.apply(Database(conn, execute_plugins=False), stop_before=step)
    conn.execute(f"PRAGMA user_version={names.index(step)}")
    scope, every = policy.Scope("default", "llama3.2").hash, max(1, round(1 / changed)) if changed else 0
    now = time.time()
    conn.execute("BEGIN")
    for i in range(entries):
        # "... C#?" is keyed as "... c" before and "... c#?" now; the others keep their key
        query = f"How do I set up project {i} in {'C#' if every and i % every == 0 else 'Rust'}?"
        conn.execute("INSERT INTO entries (scope, exact_key, namespace, model, options, query, response, created_at, "
                     "hits) VALUES (?, ?, 'default', 'llama3.2:latest', '{}', ?, ?, ?, 0)",
                     (scope, previous_key(query), query, f"An answer of about three hundred characters. {i} " * 6, now))
    conn.execute("COMMIT")
    conn.close()


def floor(path: Path) -> float:
    conn = sqlite3.connect(path)
    start = time.perf_counter()
    for (query,) in conn.execute("SELECT query FROM entries"):
        policy.exact_key(query)
    took = time.perf_counter() - start
    conn.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.1, help="share of entries whose key changes")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        made = Path(scratch) / "previous.db"
        previous_store(made, args.entries, args.changed)
        migrations, floors = [], []
        for run in range(args.runs):
            path = Path(scratch) / f"run{run}.db"
            shutil.copyfile(made, path)
            floors.append(floor(path))
            start = time.perf_counter()
            SQLiteStore.open(path).close()
            migrations.append(time.perf_counter() - start)
            with sqlite3.connect(path) as conn:
                assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == args.entries
        migration, least = statistics.median(migrations), statistics.median(floors)
        print(f"{args.entries:,} entries, {args.changed:.0%} of keys changed: migration {migration:.2f} s "
              f"({migration / args.entries * 1e6:.1f} us an entry); floor (read + new key) {least:.2f} s; "
              f"x floor {migration / least:.2f}")


if __name__ == "__main__":
    main()
