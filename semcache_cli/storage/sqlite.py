"""The single-file SQLite store, the default backend of the storage port.

Design choices:
- Hot paths use the stdlib sqlite3 connection directly with parameterised SQL.
  sqlite-utils is imported only to create or migrate the schema (sqlite_schema.py).
- Vectors live in their own narrow table (`entry_vectors`) as little-endian float32 blobs,
  so a semantic scan reads only vector pages, never the answers' text; the search index
  over them is sqlite_index.py. A trigger removes a vector with its entry. The vector
  code is imported only by the methods that use it: an exact hit never loads it.
- WAL, a busy timeout and short explicit `BEGIN IMMEDIATE` transactions let many
  processes ask at once beside a cron purge.
- The file is created 0600 in a 0700 directory: it holds people's prompts.
- Every sqlite3 error leaving a public method becomes a StoreError saying what to do
  (`store_error`): the disk is full, the file is locked, damaged, or read-only.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semcache_cli import policy
from semcache_cli.errors import StoreDamaged, StoreError, StoreFull, StoreReadOnly, UnreadableEntry, UsageError
from semcache_cli.storage.models import (
    CALIBRATION_COLUMNS,
    ENTRY_FIELDS,
    LOG_FIELDS,
    STORED_FIELDS,
    Entry,
    EntryCounts,
    LogRow,
    Neighbour,
    NewEntry,
    RequestCounts,
    TopEntry,
    VectorGroup,
    calibration_columns,
    calibration_from_columns,
)
from semcache_cli.storage.sqlite_schema import SCHEMA_VERSION, migration_set
from semcache_cli.storage.translate import translating

if TYPE_CHECKING:
    from semcache_cli.storage.selector import Selector
    from semcache_cli.vectors import Calibration

BUSY_TIMEOUT_S = 30.0
MIN_SQLITE = (3, 35, 0)  # RETURNING (3.35), upserts (3.24)
MMAP_BYTES = 1 << 31  # SQLite's default ceiling; a larger file is mapped this far
DELETE_BATCH = 500
ROW_HEADER = 40  # bytes of record header and rowid a row costs beside its values
# Bytes of pages a byte of row data takes once VACUUM has packed the file: measured
# 1.05-1.12 over caches of 66 to 3,000 entries, 384 and 768 dims, answers of 50 B to
# 40 KB; the bound errs on the side of a file under it.
PACKING = 1.15

_ENTRY_COLUMNS = ", ".join(ENTRY_FIELDS)
_INSERT_ENTRY = (f"INSERT INTO entries ({', '.join(STORED_FIELDS)}) "
                 f"VALUES ({', '.join('?' for _ in STORED_FIELDS)})")
_UPSERT_SET = ", ".join(
    "hits = 0" if name == "hits" else "last_hit_at = NULL" if name == "last_hit_at" else f"{name} = excluded.{name}"
    for name in STORED_FIELDS if name not in ("scope", "exact_key")
)
_IMPORT_SET = ", ".join(f"{name} = excluded.{name}" for name in STORED_FIELDS if name not in ("scope", "exact_key"))
_INSERT_REQUEST = (f"INSERT INTO requests ({', '.join(LOG_FIELDS)}) "
                   f"VALUES ({', '.join('?' for _ in LOG_FIELDS)})")
# A column's value when it is a number (a row written by hand may hold text there).
_NUMBER = "CASE WHEN typeof({0}) IN ('integer', 'real') THEN {0} END"
# Rows whose typed columns hold what no semcache writes: what models.Entry.from_stored
# refuses, for the aggregates (stats) that never decode an entry.
_DAMAGED = " OR ".join([
    "typeof(hits) != 'integer' OR hits < 0", "typeof(created_at) NOT IN ('integer', 'real')",
    *(f"typeof({c}) NOT IN ('integer', 'real', 'null')" for c in ("ttl", "expires_at", "last_hit_at", "generation_s")),
    *(f"typeof({c}) NOT IN ('integer', 'null')" for c in ("prompt_tokens", "completion_tokens", "dims")),
    "NOT json_valid(options)", "(metadata IS NOT NULL AND NOT json_valid(metadata))",
    "(format IS NOT NULL AND NOT json_valid(format))",
    *(f"typeof({c}) != 'text'" for c in ("scope", "exact_key", "namespace", "model", "query", "response")),
])
# An entry's bytes as used_bytes() counts them: its row and its vector's, packed.
_ENTRY_SIZE = (f"""CAST((length(e.scope) + length(e.exact_key) + length(CAST(e.query AS BLOB))
    + length(CAST(e.response AS BLOB)) + coalesce(length(CAST(e.system AS BLOB)), 0)
    + length(e.options) + coalesce(length(e.format), 0) + coalesce(length(e.metadata), 0)
    + coalesce(length(v.vector) + length(v.scope), 0) + {2 * ROW_HEADER:d}) * {PACKING} AS INTEGER)""")
_ENTRY_SIZE_FROM = "FROM entries e LEFT JOIN entry_vectors v ON v.entry_id = e.id"
_SORTS = {
    "newest": "created_at DESC, id DESC",
    "oldest": "created_at ASC, id ASC",
    "hits": "hits DESC, id DESC",
    "last-hit": "last_hit_at IS NULL, last_hit_at DESC, id DESC",
}


def _no_space_left(location: str) -> bool:
    try:
        return os.statvfs(os.path.dirname(os.path.abspath(location))).f_bavail == 0
    except OSError:
        return False


def store_error(exc: BaseException, location: str) -> StoreError:
    """What a sqlite3 error means to the user, by SQLite's own result code. An I/O error
    on a disk with no space left is a full disk too (SQLite says I/O error when it cannot
    even grow its shared-memory file)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == 13 or (code == 10 and _no_space_left(location)):  # SQLITE_FULL, SQLITE_IOERR
        return StoreFull(f"the disk holding {location} is full ({exc}): free some space; the cache was left as it was")
    if code in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return StoreError(f"the cache database {location} stayed locked by another process for "
                          f"{BUSY_TIMEOUT_S:.0f} s; try again")
    if code == 8:  # SQLITE_READONLY
        return StoreReadOnly(f"cannot write to {location} ({exc}): check the file's and its directory's permissions")
    garbled = isinstance(exc, UnicodeDecodeError) or "Could not decode to UTF-8" in str(exc)  # as sqlite3 says it
    if code in (11, 26) or garbled:  # SQLITE_CORRUPT, SQLITE_NOTADB; text that is not UTF-8
        reason = "text in it is not valid UTF-8" if garbled else str(exc)
        return StoreDamaged(f"the cache database {location} is damaged ({reason}); move it aside "
                            "(semcache starts a new one) or restore a backup")
    return StoreError(f"cannot use the cache database {location}: {exc}")


def _create_private_file(path: Path, create_parent: bool) -> None:
    parent = path.parent
    if not parent.is_dir():
        if not create_parent:
            raise UsageError(f"database directory {parent} does not exist (create it, or pick another store)", setting="db")
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except FileExistsError:
            pass  # another process created it first
        except OSError as exc:
            raise StoreError(f"cannot create database {path}: {exc.strerror}") from None


def _check_owner(path: Path, private: bool, warn: Callable[[str], None] | None) -> None:
    from semcache_cli import ownership

    if private:
        found = ownership.problem(path)
        if found:
            # a setting to fix (where the cache lives), as a bad --db path is: exit 2
            raise UsageError(f"refusing the cache at {path}: {found}, so another user could plant answers in it "
                             "or read your questions; make it yours alone, or keep the cache elsewhere (SEMCACHE_DB)")
    elif warn is not None:
        found = ownership.named_problem(path)
        if found:
            warn(f"{found}: another user can change the answers in this cache, and read your questions")


def _writable(path: Path) -> bool:
    """This process may write the file and create the files SQLite keeps beside it."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _where(selector: Selector, now: float) -> tuple[str, list[Any]]:
    """The selector as a WHERE clause of fixed fragments; every user value is a bound
    parameter. An empty selector matches every entry."""
    clauses: list[str] = []
    params: list[Any] = []
    if selector.expired:
        clauses.append("expires_at IS NOT NULL AND expires_at <= ?")
        params.append(now)
    if selector.live:
        clauses.append("expires_at IS NULL OR expires_at > ?")
        params.append(now)
    if selector.older_than is not None:
        clauses.append("created_at < ?")
        params.append(now - selector.older_than)
    for column in ("namespace", "model", "embed_model"):
        if getattr(selector, column):
            clauses.append(f"{column} = ?")
            params.append(getattr(selector, column))
    if selector.ids:
        clauses.append(f"id IN ({', '.join('?' for _ in selector.ids)})")
        params.extend(selector.ids)
    if selector.grep:
        clauses.append("(instr(lower(query), lower(?)) > 0 OR instr(lower(response), lower(?)) > 0)")
        params.extend([selector.grep, selector.grep])
    if selector.unused_since is not None:
        clauses.append("coalesce(last_hit_at, created_at) <= ?")
        params.append(selector.unused_since)
    return " AND ".join(f"({c})" for c in clauses) or "TRUE", params


def _log_where(selector: Selector) -> tuple[str, list[Any]]:
    """The request-log rows a content selector names by their own fields (purge decides
    when one applies): namespace, model and embedding model as asked for (`llama3.2`
    logged is `llama3.2:latest` selected), the question's text, the entry served."""
    clauses: list[str] = []
    params: list[Any] = []
    if selector.namespace:
        clauses.append("namespace = ?")
        params.append(selector.namespace)
    for column in ("model", "embed_model"):
        if getattr(selector, column):
            clauses.append(f"(lower({column}) = ? OR lower({column}) || ':latest' = ?)")
            params.extend([getattr(selector, column)] * 2)
    if selector.grep:
        clauses.append("instr(lower(coalesce(query, '')), lower(?)) > 0")
        params.append(selector.grep)
    if selector.ids:
        clauses.append(f"entry_id IN ({', '.join('?' for _ in selector.ids)})")
        params.extend(selector.ids)
    return " AND ".join(f"({c})" for c in clauses) or "FALSE", params


def _window(since: float | None) -> tuple[str, list[Any]]:
    return ("at >= ?", [since]) if since is not None else ("TRUE", [])


def _translate(store: SQLiteStore, exc: BaseException) -> StoreError:
    error = store_error(exc, store.location)
    if isinstance(error, StoreDamaged):
        store.damaged = True  # never written to again by this connection
    return error


@translating((sqlite3.Error, UnicodeDecodeError), _translate)
class SQLiteStore:
    """One connection to the cache file (one per process, or per thread: `reopen`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.location = str(path)
        self.damaged = False

    @classmethod
    def open(cls, path: Path, create_parent: bool = False, warn: Callable[[str], None] | None = None,
             create: bool = True, read_only: bool = False, private: bool = False) -> SQLiteStore:
        """The cache file at `path`, created (create) and migrated as needed. read_only:
        for commands that only read (stats, inspect, dry runs): the file must exist and
        is left as it was found, its write-ahead log included. private: the default
        location, refused when another user could change it (ownership.py); a named
        path is only warned about."""
        path = Path(path)
        if private:  # first: another user's directory may not even let us look inside
            _check_owner(path, True, None)
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(f"this Python's SQLite is {sqlite3.sqlite_version}; semcache needs "
                             f"{'.'.join(map(str, MIN_SQLITE))} or newer (RETURNING): use a newer Python build")
        if path.is_dir():
            raise UsageError(f"database path {path} is a directory")
        if path.exists() and not path.is_file():
            raise UsageError(f"database path {path} is not a regular file (a device or a pipe)")
        if (read_only or not create) and not path.exists():
            raise UsageError(f"there is no cache at {path} (check the path)")
        if not private:  # a regular file, or none yet
            _check_owner(path, False, warn)
        if not read_only and not (path.exists() and not _writable(path)):
            _create_private_file(path, create_parent)
            if private:  # what was made may have met what another user made first
                _check_owner(path, private, None)
        if not os.access(path, os.R_OK):
            raise StoreError(f"cannot read and write the database {path}: permission denied "
                             "(semcache writes on every ask; check the file's owner and mode)")
        # A file this process may only read (its mode, its directory's, a read-only mount)
        # is opened for reading: every write is then refused (StoreReadOnly), and an ask
        # serves what it finds without the writes it can do without.
        read_only = read_only or not _writable(path)
        try:
            # A log with writes in it stays as it is (mode=ro cannot fold it back); with
            # none, a plain connection creates and removes its own, leaving no trace. In
            # a directory this process cannot write (a read-only mount), SQLite could not
            # make its shared-memory file: with no log to read, the file is read as it is
            # (immutable: nothing can change it through this mount).
            wal = Path(f"{path}-wal").exists()
            if read_only and (wal or not os.access(path.parent, os.W_OK)):
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{'' if wal else '&immutable=1'}", uri=True,
                                       timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 26) & 0xFF != 26:  # not SQLITE_NOTADB: the file may well be fine
                raise store_error(exc, str(path)) from None
            raise StoreDamaged(f"{path} is not a usable SQLite database ({exc}); pick another store",
                               setting="db") from None
        store = cls(conn, path)
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{path} was written by a newer semcache (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade semcache or use another store", setting="db"
            )
        try:
            if version < SCHEMA_VERSION:
                if read_only and not _writable(path):
                    conn.close()
                    raise StoreReadOnly(f"{path} was written by an older semcache (schema {version}) and must be "
                                        "upgraded, which needs write access to it and its directory")
                if read_only:  # an older file is migrated first, as any command would
                    conn.close()
                    cls.open(path, warn=None).close()
                    return cls.open(path, warn=warn, read_only=True)
                store._migrate_when_free()
                if 0 < version < 7:  # a file from before the calibrated scale: one for each model now
                    from semcache_cli.storage import scales

                    scales.rebuild_all(store)
            store._prepare()
        except sqlite3.Error as exc:
            conn.close()
            raise store_error(exc, str(path)) from None
        if warn is not None and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            warn(f"{path} is readable by other users and holds your prompts: chmod 600 {path}")
        return store

    @classmethod
    def empty(cls, path: Path) -> SQLiteStore:
        """An empty cache in memory, named after `path`: what a read-only command reports
        on before the first ask has created the default file, which it must not create."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        store = cls(conn, Path(path))
        store._migrate()
        return store

    def _prepare(self) -> None:
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # Pages read in place from the OS page cache, not copied in by a read() each:
        # the re-rank reads 256 scattered 16 KB pages per lookup (measured 1.9 -> 1.0 ms).
        self._conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")

    def _migrate_when_free(self) -> None:
        """Switching a new file to WAL does not wait on the busy timeout: when many
        processes open a brand-new file at once, the others retry until it is done."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _migrate(self) -> None:
        import sqlite_utils

        # Page size and WAL are properties of the file, set once here, before any table
        # exists and outside a transaction. 16 KB pages hold five 768-dim vectors where
        # 4 KB pages hold one and waste a quarter of the file. Then one writer at a time
        # applies whatever migrations are pending.
        if self._conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            self._conn.execute("PRAGMA page_size=16384")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if self._conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db = sqlite_utils.Database(self._conn, execute_plugins=False)
                migration_set().apply(db)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION:d}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def reopen(self) -> SQLiteStore:
        # mode=rw: never create a file that was removed meanwhile
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
        store = SQLiteStore(conn, self.path)
        store._prepare()
        return store

    def now(self) -> float:
        """One machine's file: its clock (a file shared over a network file system by
        hosts whose clocks disagree is not supported; use the shared store)."""
        return time.time()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> _WriteTransaction:
        if self.damaged:
            raise StoreDamaged(f"the cache database {self.location} is damaged; nothing more is written to it: move "
                               "it aside (semcache starts a new one) or restore a backup")
        return _WriteTransaction(self._conn)

    # -- the ask path ------------------------------------------------------------------

    def find_exact(self, scope: str, key: str) -> Entry | None:
        row = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE scope = ? AND exact_key = ?", (scope, key)
        ).fetchone()
        return Entry.from_stored(row) if row else None

    def get(self, entry_id: int) -> Entry | None:
        row = self._conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return Entry.from_stored(row) if row else None

    def nearest(self, scope: str, embed_model: str, vector: Sequence[float], k: int,
                directions: Sequence[Sequence[float]] = ()) -> list[Neighbour]:
        from semcache_cli.storage import sqlite_index

        return [Neighbour(*found) for found in
                sqlite_index.nearest(self._conn, (scope, embed_model, len(vector)), vector, k, directions)]

    # -- the calibrated scale ----------------------------------------------------------

    def calibration(self, embed_model: str, dims: int) -> Calibration | None:
        row = self._conn.execute(f"SELECT {', '.join(CALIBRATION_COLUMNS)} FROM calibrations "
                                 "WHERE embed_model = ? AND dims = ?", (embed_model, dims)).fetchone()
        return calibration_from_columns(row) if row else None

    def save_calibration(self, embed_model: str, calibration: Calibration) -> None:
        with self._write():
            self._conn.execute(f"INSERT OR REPLACE INTO calibrations (embed_model, {', '.join(CALIBRATION_COLUMNS)}) "
                               f"VALUES (?{', ?' * len(CALIBRATION_COLUMNS)})",
                               (embed_model, *calibration_columns(calibration)))

    def advance_calibration(self, embed_model: str, calibration: Calibration, replacing: Calibration | None) -> bool:
        values = (embed_model, *calibration_columns(calibration))
        with self._write():
            if replacing is None:
                return self._conn.execute(f"INSERT INTO calibrations (embed_model, {', '.join(CALIBRATION_COLUMNS)}) "
                                          f"VALUES (?{', ?' * len(CALIBRATION_COLUMNS)}) ON CONFLICT DO NOTHING",
                                          values).rowcount == 1
            changed = ", ".join(f"{c} = ?" for c in CALIBRATION_COLUMNS[1:])
            return self._conn.execute(
                f"UPDATE calibrations SET {changed} WHERE embed_model = ? AND dims = ? AND vectors = ? "
                "AND checked_at = ?", (*values[2:], embed_model, calibration.dims, replacing.vectors,
                                       replacing.checked_at)).rowcount == 1

    def reference_vectors(self, embed_model: str, dims: int) -> tuple[str, bytes] | None:
        row = self._conn.execute("SELECT fingerprint, vectors FROM reference_vectors WHERE embed_model = ? AND dims = ?",
                                 (embed_model, dims)).fetchone()
        return (row[0], bytes(row[1])) if row and isinstance(row[0], str) and isinstance(row[1], bytes) else None

    def save_reference_vectors(self, embed_model: str, dims: int, fingerprint: str, blob: bytes) -> None:
        with self._write():
            self._conn.execute("INSERT OR REPLACE INTO reference_vectors VALUES (?, ?, ?, ?)",
                               (embed_model, dims, fingerprint, blob))

    def top_entry_id(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])

    def vector_groups(self) -> list[VectorGroup]:
        return [VectorGroup(*r) for r in self._conn.execute(
            "SELECT embed_model, dims, count(*), max(entry_id) FROM entry_vectors GROUP BY embed_model, dims "
            "ORDER BY 1, 2")]

    def vector_count(self, embed_model: str, dims: int) -> int:
        return int(self._conn.execute("SELECT count(*) FROM entry_vectors WHERE embed_model = ? AND dims = ?",
                                      (embed_model, dims)).fetchone()[0])

    def sample_vectors(self, embed_model: str, dims: int, n: int) -> list[Sequence[float]]:
        from semcache_cli import vectors

        return [vectors.decode(r[0]) for r in self._conn.execute(
            "SELECT vector FROM entry_vectors WHERE embed_model = ? AND dims = ? ORDER BY random() LIMIT ?",
            (embed_model, dims, n))]

    def store_answer(self, new: NewEntry, request: LogRow | None = None, claim_owner: str | None = None) -> int:
        with self._write():
            if claim_owner is not None:
                self._conn.execute("DELETE FROM claims WHERE scope = ? AND exact_key = ? AND owner = ?",
                                   (new.scope, new.exact_key, claim_owner))
            entry_id = self._conn.execute(
                f"{_INSERT_ENTRY} ON CONFLICT (scope, exact_key) DO UPDATE SET {_UPSERT_SET} RETURNING id",
                new.stored_values(),
            ).fetchone()[0]
            self._put_vector(entry_id, new.scope, new.embed_model, new.vector)
            if request is not None:
                self._conn.execute(_INSERT_REQUEST, request._replace(entry_id=entry_id)[:-1])
        return int(entry_id)

    def _put_vector(self, entry_id: int, scope: str, embed_model: str | None, vector: Sequence[float] | None) -> None:
        """The entry's vector and its sign code, in the caller's transaction; without one,
        a vector of the row's old state is dropped."""
        if vector is None:
            self._conn.execute("DELETE FROM entry_vectors WHERE entry_id = ?", (entry_id,))
            return
        from semcache_cli import vectors
        from semcache_cli.storage import sqlite_index

        blob = vectors.encode(vector)
        self._conn.execute("INSERT OR REPLACE INTO entry_vectors (entry_id, scope, embed_model, dims, vector) "
                           "VALUES (?, ?, ?, ?, ?)", (entry_id, scope, embed_model, len(vector), blob))
        sqlite_index.append_codes(self._conn, scope, embed_model or "", len(vector), [entry_id],
                                  [vectors.sign_code(vectors.decode(blob))])

    def import_entries(self, rows: list[tuple[Entry, Sequence[float] | None]]) -> int:
        written = 0
        with self._write():
            for entry, vector in rows:
                row = self._conn.execute(
                    f"{_INSERT_ENTRY} ON CONFLICT (scope, exact_key) DO UPDATE SET {_IMPORT_SET} "
                    "WHERE excluded.created_at > entries.created_at RETURNING id", entry.stored_values(),
                ).fetchone()
                if row is not None:
                    written += 1
                    self._put_vector(row[0], entry.scope, entry.embed_model, vector)
        return written

    def store_many(self, news: Iterable[NewEntry]) -> list[int]:
        """In one transaction: for warming and benchmark caches, where per-answer
        transactions and chunk rewrites would dominate."""
        from semcache_cli import vectors
        from semcache_cli.storage import sqlite_index

        news = list(news)
        ids: list[int] = []
        with self._write():
            for new in news:
                ids.append(self._conn.execute(f"{_INSERT_ENTRY} RETURNING id", new.stored_values()).fetchone()[0])
            groups: dict[tuple[str, str, int], list[tuple[int, bytes]]] = {}
            for entry_id, new in zip(ids, news, strict=True):
                if new.vector is not None:
                    groups.setdefault((new.scope, new.embed_model or "", new.dims or 0), []).append(
                        (entry_id, vectors.encode(new.vector)))
            for group, members in groups.items():
                self._conn.executemany(
                    "INSERT INTO entry_vectors (entry_id, scope, embed_model, dims, vector) VALUES (?, ?, ?, ?, ?)",
                    [(entry_id, *group, blob) for entry_id, blob in members],
                )
                sqlite_index.index_vectors(self._conn, group, members)
        return ids

    def record_hit(self, entry_id: int, now: float, request: LogRow) -> None:
        with self._write():
            self._conn.execute("UPDATE entries SET hits = hits + 1, last_hit_at = ? WHERE id = ?", (now, entry_id))
            self._conn.execute(_INSERT_REQUEST, request[:-1])

    def record_hits(self, hits: Sequence[tuple[int, float, LogRow]]) -> None:
        with self._write():
            self._conn.executemany("UPDATE entries SET hits = hits + 1, last_hit_at = ? WHERE id = ?",
                                   [(now, entry_id) for entry_id, now, _ in hits])
            self._conn.executemany(_INSERT_REQUEST, [request[:-1] for _, _, request in hits])

    def log_request(self, request: LogRow) -> None:
        with self._write():
            self._conn.execute(_INSERT_REQUEST, request[:-1])

    # -- single-flight claims ----------------------------------------------------------

    def take_claim(self, scope: str, key: str, owner: str, host: str, pid: int, lease_s: float) -> bool:
        now = time.time()
        with self._write():
            row = self._conn.execute(
                "SELECT host, pid, expires_at FROM claims WHERE scope = ? AND exact_key = ?", (scope, key)
            ).fetchone()
            # One file is shared by the processes of one machine (or of a few, over a
            # network file system): a holder on this host whose process is gone is gone.
            if row is not None and row[2] > now and not (row[0] == host and not _process_alive(row[1])):
                return False
            self._conn.execute(
                "INSERT OR REPLACE INTO claims (scope, exact_key, owner, host, pid, claimed_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (scope, key, owner, host, pid, now, now + lease_s),
            )
        return True

    def renew_claim(self, scope: str, key: str, owner: str, lease_s: float) -> None:
        self._conn.execute("UPDATE claims SET expires_at = ? WHERE scope = ? AND exact_key = ? AND owner = ?",
                           (time.time() + lease_s, scope, key, owner))

    def release_claim(self, scope: str, key: str, owner: str) -> None:
        with self._write():
            self._conn.execute("DELETE FROM claims WHERE scope = ? AND exact_key = ? AND owner = ?",
                               (scope, key, owner))

    # -- listing and selecting ---------------------------------------------------------

    def entries(self, selector: Selector, now: float, sort: str = "newest", limit: int = 0,
                with_vectors: bool = False, damaged: Callable[[UnreadableEntry], None] | None = None,
                ) -> Iterator[tuple[Entry, Sequence[float] | None]]:
        where, params = _where(selector, now)
        vector_sql = (", (SELECT vector FROM entry_vectors v WHERE v.entry_id = entries.id)"
                      if with_vectors else ", NULL")
        sql = f"SELECT {_ENTRY_COLUMNS}{vector_sql} FROM entries WHERE {where} ORDER BY {_SORTS[sort]}"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        from semcache_cli import vectors

        for row in self._conn.execute(sql, params):
            entry = Entry.decode(row[:-1], damaged)
            if entry is not None:
                yield entry, vectors.decode(row[-1]) if row[-1] is not None else None

    def vector_of(self, entry_id: int) -> Sequence[float] | None:
        from semcache_cli import vectors

        row = self._conn.execute("SELECT vector FROM entry_vectors WHERE entry_id = ?", (entry_id,)).fetchone()
        return vectors.decode(row[0]) if row else None

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM entries").fetchone()[0])

    def select_ids(self, selector: Selector, now: float) -> list[int]:
        where, params = _where(selector, now)
        return [r[0] for r in self._conn.execute(f"SELECT id FROM entries WHERE {where} ORDER BY id", params)]

    def lru_ids(self) -> list[int]:
        return [r[0] for r in self._conn.execute(
            "SELECT id FROM entries ORDER BY coalesce(last_hit_at, created_at) DESC, created_at DESC, id DESC")]

    def delete(self, ids: list[int], recheck: Selector, now: float) -> int:
        where, params = _where(recheck, now)
        deleted = 0
        for start in range(0, len(ids), DELETE_BATCH):
            batch = ids[start:start + DELETE_BATCH]
            with self._write():
                deleted += self._conn.execute(
                    f"DELETE FROM entries WHERE id IN ({', '.join('?' for _ in batch)}) AND ({where})",
                    [*batch, *params],
                ).rowcount
        return deleted

    def delete_log_before(self, at: float) -> int:
        with self._write():
            return int(self._conn.execute("DELETE FROM requests WHERE at < ?", (at,)).rowcount)

    def delete_log_of(self, selector: Selector, entry_ids: Sequence[int], before: float,
                      dry_run: bool = False) -> int:
        where, params = _log_where(selector)
        found = {r[0] for r in self._conn.execute(f"SELECT id FROM requests WHERE {where}", params)}
        for start in range(0, len(entry_ids), DELETE_BATCH):
            batch = list(entry_ids[start:start + DELETE_BATCH])
            found.update(r[0] for r in self._conn.execute(
                f"SELECT id FROM requests WHERE at <= ? AND entry_id IN ({', '.join('?' for _ in batch)})",
                [before, *batch]))
        if dry_run:
            return len(found)
        rows = sorted(found)
        deleted = 0
        for start in range(0, len(rows), DELETE_BATCH):
            batch = rows[start:start + DELETE_BATCH]
            with self._write():
                deleted += self._conn.execute(
                    f"DELETE FROM requests WHERE id IN ({', '.join('?' for _ in batch)})", batch).rowcount
        return deleted

    def count_log_before(self, at: float) -> int:
        return int(self._conn.execute("SELECT count(*) FROM requests WHERE at < ?", (at,)).fetchone()[0])

    def request_log(self, since: float | None = None) -> Iterator[LogRow]:
        window, params = _window(since)
        for row in self._conn.execute(
                f"SELECT {', '.join(LOG_FIELDS)}, id FROM requests WHERE {window} ORDER BY at, id", params):
            yield LogRow(*row)

    # -- stats -------------------------------------------------------------------------

    def entry_counts(self, now: float) -> EntryCounts:
        total, expired, oldest, newest = self._conn.execute(
            "SELECT count(*), count(CASE WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 1 END), "
            f"min({_NUMBER.format('created_at')}), max({_NUMBER.format('created_at')}) FROM entries", (now,)
        ).fetchone()

        def by(column: str) -> dict[str, int]:
            return dict(self._conn.execute(
                f"SELECT coalesce({column}, '(none)'), count(*) FROM entries GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall())

        damaged = [r[0] for r in self._conn.execute(f"SELECT id FROM entries WHERE {_DAMAGED} ORDER BY id")]
        return EntryCounts(total, expired, oldest, newest, by("namespace"), by("model"), by("embed_model"),
                           len(damaged), tuple(damaged[:5]))

    def request_counts(self, since: float | None) -> RequestCounts:
        window, params = _window(since)
        conn = self._conn
        by_path = dict(conn.execute(f"SELECT path, count(*) FROM requests WHERE {window} GROUP BY path",
                                    params).fetchall())
        misses = dict(conn.execute(
            f"SELECT coalesce(miss_reason, ?), count(*) FROM requests WHERE {window} AND path IN ('model', 'miss') "
            "AND coalesce(miss_reason, '') != ? GROUP BY 1 ORDER BY 2 DESC, 1",
            [policy.NO_MATCH, *params, policy.BYPASS],
        ).fetchall())
        bypasses = conn.execute(
            f"SELECT count(*) FROM requests WHERE {window} AND path IN ('model', 'miss') AND miss_reason = ?",
            [*params, policy.BYPASS],
        ).fetchone()[0]
        saved_s, saved_tokens = conn.execute(
            f"SELECT coalesce(sum(saved_s), 0), coalesce(sum(saved_tokens), 0) FROM requests "
            f"WHERE {window} AND path IN ('exact', 'semantic')", params,
        ).fetchone()
        latencies: dict[str, list[float]] = {}
        for path, latency in conn.execute(
                f"SELECT path, latency_ms FROM requests WHERE {window} AND latency_ms IS NOT NULL "
                "ORDER BY path, latency_ms", params):
            latencies.setdefault(path, []).append(latency)
        return RequestCounts(by_path, misses, bypasses, float(saved_s), int(saved_tokens), latencies)

    def similarity_samples(self, since: float | None, low: float, threshold: float) -> list[tuple[str, float]]:
        window, params = _window(since)
        return [(r[0], r[1]) for r in self._conn.execute(
            f"SELECT path, similarity FROM requests WHERE {window} AND similarity >= ? AND ("
            "path = 'semantic' OR (path IN ('model', 'miss') AND coalesce(miss_reason, '') = ? AND similarity < ?))",
            [*params, low, policy.NO_MATCH, threshold],
        )]

    def top_entries(self, limit: int) -> list[TopEntry]:
        return [TopEntry(*r) for r in self._conn.execute(
            f"SELECT id, hits, query FROM entries WHERE NOT ({_DAMAGED}) AND hits > 0 ORDER BY hits DESC, id LIMIT ?",
            (limit,))]

    # -- size and maintenance ----------------------------------------------------------

    def disk_bytes(self) -> int:
        """The database file plus its write-ahead log, as `du` would count them."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total

    def used_bytes(self) -> int:
        """What the data takes as --vacuum packs it, estimated from the data itself, so
        that it does not depend on how full the pages left by earlier deletions are: one
        page for each table and index (even empty), and the entries and the request log
        at PACKING times their bytes (the scales, a row per embedding model, ride in
        PACKING's margin: a purge that drops one must not make its dry run wrong). The
        same data gives the same figure, whatever the file's history: a bound planned on
        it holds when the purge runs again."""
        page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        trees = self._conn.execute("SELECT count(*) FROM sqlite_schema WHERE rootpage > 0").fetchone()[0]
        entries = self._conn.execute(f"SELECT coalesce(sum({_ENTRY_SIZE}), 0) {_ENTRY_SIZE_FROM}").fetchone()[0]
        # The reference questions' vectors (a model's cold start: ~1 MB at 768 dims) are
        # a fixed cost of the store, no entry: nothing a purge can evict, but in the file.
        reference = self._conn.execute("SELECT coalesce(sum(length(vectors) + length(fingerprint) + 64), 0) "
                                       "FROM reference_vectors").fetchone()[0]
        return int(page_size * (trees + 1) + entries + reference * PACKING + self.log_bytes())

    def entry_sizes(self) -> list[tuple[int, int]]:
        return [(r[0], r[1]) for r in self._conn.execute(
            f"SELECT e.id, {_ENTRY_SIZE} {_ENTRY_SIZE_FROM} "
            "ORDER BY coalesce(e.last_hit_at, e.created_at), e.created_at, e.id")]

    def log_bytes(self, before: float | None = None) -> int:
        return int(self._conn.execute(
            f"""SELECT coalesce(sum(CAST((coalesce(length(scope), 0) + coalesce(length(exact_key), 0)
                    + coalesce(length(CAST(query AS BLOB)), 0) + coalesce(length(CAST(error AS BLOB)), 0)
                    + {ROW_HEADER + 80:d}) * {PACKING} AS INTEGER)), 0) FROM requests WHERE ? IS NULL OR at < ?""",
            (before, before),
        ).fetchone()[0])

    def compact(self) -> None:
        """Drop ids of deleted entries and superseded codes from the search chunks,
        rewriting only the groups that hold any."""
        from semcache_cli.storage import sqlite_index

        for group in sqlite_index.stale_groups(self._conn):
            with self._write():
                sqlite_index.rewrite_group(self._conn, group)

    def vacuum(self) -> None:
        self._conn.execute("VACUUM")
        # In WAL mode the packed file reaches the disk at a checkpoint; without one now it
        # waits for the last connection to close, and not at all while another is open.
        self.checkpoint()

    def checkpoint(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


_PROCESS_WRITES = threading.Lock()


class _WriteTransaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front (waiting out the busy
    timeout) so a transaction never fails half-way on a lock upgrade. Any failure rolls
    back; the store's methods translate sqlite3 errors."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        # The threads of one process (semcache serve, the Python API) take turns here:
        # waiting on SQLite's lock instead, a thread sleeps in its busy handler's steps
        # (up to 100 ms) while the lock is free again within a fraction of a millisecond.
        _PROCESS_WRITES.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            _PROCESS_WRITES.release()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except sqlite3.Error:
                    self._rollback()
                    raise
            self._rollback()
        finally:
            _PROCESS_WRITES.release()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled back itself (a full disk, an I/O error)
