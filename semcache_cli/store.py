"""The single-file SQLite store: schema, migrations, reads and writes.

Design choices:
- Hot paths use the stdlib sqlite3 connection directly with parameterised SQL.
  sqlite-utils (which imports click and numpy, ~0.2 s) is imported only to create or
  migrate the schema, which happens once per database file.
- The schema version lives in `PRAGMA user_version`, one cheap read per process; the
  migrations themselves are a sqlite-utils `Migrations` set. A file from a newer
  semcache is refused, never rewritten.
- Vectors live in their own narrow table (`entry_vectors`) so a semantic scan reads
  only vector pages, never the answers' text. A trigger removes a vector with its entry.
- WAL, a busy timeout and short explicit `BEGIN IMMEDIATE` transactions let many
  processes ask at once beside a cron purge.
- The file is created 0600 in a 0700 directory: it holds people's prompts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from semcache_cli import policy
from semcache_cli.errors import StoreError, UsageError

SCHEMA_VERSION = 6
SEARCH_CHUNK = 1024  # entries per search chunk row
SEARCH_TAIL = 64  # a single store appends to a tail row this small (see append_codes)
BUSY_TIMEOUT_S = 30.0
MMAP_BYTES = 1 << 31  # SQLite's default ceiling; a larger file is mapped this far

ENTRY_COLUMNS = (
    "scope", "exact_key", "namespace", "model", "system", "options", "format", "query", "response", "embed_model",
    "dims", "created_at", "ttl", "expires_at", "hits", "last_hit_at", "prompt_tokens", "completion_tokens",
    "generation_s", "done_reason", "metadata",
)
INSERT_ENTRY = (f"INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in ENTRY_COLUMNS)})")
REQUEST_COLUMNS = (
    "at", "namespace", "model", "embed_model", "scope", "exact_key", "query", "path", "entry_id",
    "similarity", "confidence", "miss_reason", "latency_ms", "saved_s", "saved_tokens", "error",
)


def _migrations() -> Any:
    from sqlite_utils import Migrations

    migrations = Migrations("semcache")

    @migrations()
    def m001_initial(db: Any) -> None:
        db.table("entries").create(
            {
                "id": int, "scope": str, "exact_key": str, "namespace": str, "model": str,
                "system": str, "options": str, "format": str, "query": str, "response": str,
                "embed_model": str, "dims": int, "created_at": float, "ttl": float,
                "expires_at": float, "hits": int, "last_hit_at": float,
                "prompt_tokens": int, "completion_tokens": int, "generation_s": float,
                "done_reason": str, "metadata": str,
            },
            pk="id",
            not_null={"scope", "exact_key", "namespace", "model", "options", "query",
                      "response", "created_at", "hits"},
            defaults={"hits": 0, "options": "{}"},
        )
        entries = db.table("entries")
        entries.create_index(["scope", "exact_key"], unique=True)
        entries.create_index(["expires_at"])
        entries.create_index(["created_at"])
        db.table("entry_vectors").create(
            {"entry_id": int, "scope": str, "embed_model": str, "dims": int, "vector": bytes},
            pk="entry_id",
            not_null={"scope", "embed_model", "dims", "vector"},
        )
        db.table("entry_vectors").create_index(["scope", "embed_model", "dims"])
        db.execute(
            "CREATE TRIGGER entries_drop_vector AFTER DELETE ON entries BEGIN "
            "DELETE FROM entry_vectors WHERE entry_id = old.id; END"
        )
        db.table("requests").create(
            {
                "id": int, "at": float, "namespace": str, "model": str, "embed_model": str,
                "scope": str, "exact_key": str, "path": str, "entry_id": int,
                "similarity": float, "confidence": float, "miss_reason": str,
                "latency_ms": float, "saved_s": float, "saved_tokens": int, "error": str,
            },
            pk="id",
            not_null={"at", "path"},
        )
        db.table("requests").create_index(["at"])

    @migrations()
    def m002_claims(db: Any) -> None:
        # Single-flight: who is asking the model for which question right now.
        db.table("claims").create(
            {"scope": str, "exact_key": str, "owner": str, "host": str, "pid": int,
             "claimed_at": float, "expires_at": float},
            pk=("scope", "exact_key"),
            not_null={"owner", "host", "pid", "claimed_at", "expires_at"},
        )

    @migrations()
    def m003_request_query(db: Any) -> None:
        # The question itself, so `replay --from-log` can replay real traffic.
        db.table("requests").add_column("query", str)

    @migrations()
    def m004_search_chunks(db: Any) -> None:
        # The derived search layout: ids and sign codes of every vector of a (scope,
        # embedding model, dims), up to SEARCH_CHUNK to a row, appended on every store.
        db.execute(
            "CREATE TABLE search_chunks (scope TEXT NOT NULL, embed_model TEXT NOT NULL, dims INTEGER NOT NULL, "
            "chunk INTEGER NOT NULL, count INTEGER NOT NULL, ids BLOB NOT NULL, codes BLOB NOT NULL, "
            "PRIMARY KEY (scope, embed_model, dims, chunk)) WITHOUT ROWID"
        )
        if db.execute("SELECT count(*) FROM entry_vectors").fetchone()[0]:
            rebuild_search_chunks(db.conn)

    @migrations()
    def m005_short_keys(db: Any) -> None:
        # Scope hashes and exact keys cut to policy's lengths (the leading characters of
        # the same sha256), wherever they are stored. Claims are moments, not data.
        scope, key = f"substr(scope, 1, {policy.SCOPE_HASH_HEX})", f"substr(exact_key, 1, {policy.EXACT_KEY_HEX})"
        db.execute(f"UPDATE entries SET scope = {scope}, exact_key = {key}")
        db.execute(f"UPDATE entry_vectors SET scope = {scope}")
        db.execute(f"UPDATE search_chunks SET scope = {scope}")
        db.execute(f"UPDATE requests SET scope = {scope}, exact_key = {key}")
        db.execute("DELETE FROM claims")

    @migrations()
    def m006_claims_without_rowid(db: Any) -> None:
        # Claims keyed by their primary key alone: taking or releasing one writes one
        # b-tree page, not a table page and an index page. Claims are moments, not data.
        db.execute("DROP TABLE claims")
        db.execute(
            "CREATE TABLE claims (scope TEXT NOT NULL, exact_key TEXT NOT NULL, owner TEXT NOT NULL, "
            "host TEXT NOT NULL, pid INTEGER NOT NULL, claimed_at REAL NOT NULL, expires_at REAL NOT NULL, "
            "PRIMARY KEY (scope, exact_key)) WITHOUT ROWID"
        )

    return migrations


def append_codes(conn: sqlite3.Connection, scope: str, embed_model: str, dims: int,
                 ids: list[int], codes: list[bytes]) -> None:
    """Append ids and sign codes to the group's search chunks. The one writer of
    search_chunks. Bulk appends fill rows of SEARCH_CHUNK. A few codes (one store) go to
    a tail row of at most SEARCH_TAIL, folded into the row before it once full: a store
    then rewrites a few KB, not a whole chunk of up to 96 KB (16 KB pages in the WAL)."""
    group = (scope, embed_model, dims)
    rows = conn.execute(
        "SELECT chunk, count, ids, codes FROM search_chunks WHERE scope = ? AND embed_model = ? AND dims = ? "
        "ORDER BY chunk DESC LIMIT 2", group,
    ).fetchall()
    capacity = SEARCH_CHUNK if len(ids) >= SEARCH_TAIL else SEARCH_TAIL
    chunk, count, id_blob, code_blob = rows[0] if rows else (-1, capacity, b"", b"")
    before = rows[1] if len(rows) > 1 else None  # the row before the one being filled
    position = 0
    while position < len(ids):
        if count >= capacity:
            before = (chunk, count, id_blob, code_blob) if chunk >= 0 else None
            chunk, count, id_blob, code_blob = chunk + 1, 0, b"", b""
        room = min(capacity - count, len(ids) - position)
        taken = range(position, position + room)
        id_blob += b"".join(int(ids[i]).to_bytes(8, "little", signed=True) for i in taken)
        code_blob += b"".join(codes[i] for i in taken)
        count += room
        position += room
        conn.execute("INSERT OR REPLACE INTO search_chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (*group, chunk, count, id_blob, code_blob))
    if capacity == SEARCH_TAIL and count >= SEARCH_TAIL and before is not None \
            and before[1] + count <= SEARCH_CHUNK:  # fold the full tail into the row before it
        conn.execute("INSERT OR REPLACE INTO search_chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (*group, before[0], before[1] + count, before[2] + id_blob, before[3] + code_blob))
        conn.execute("DELETE FROM search_chunks WHERE scope = ? AND embed_model = ? AND dims = ? AND chunk = ?",
                     (*group, chunk))


def rebuild_search_chunks(conn: sqlite3.Connection) -> None:
    """(Re)derive every search chunk from entry_vectors, the authoritative vectors."""
    from semcache_cli import vectors

    conn.execute("DELETE FROM search_chunks")
    groups = conn.execute("SELECT DISTINCT scope, embed_model, dims FROM entry_vectors").fetchall()
    for scope, embed_model, dims in groups:
        rows = conn.execute(
            "SELECT entry_id, vector FROM entry_vectors WHERE scope = ? AND embed_model = ? AND dims = ? "
            "ORDER BY entry_id", (scope, embed_model, dims),
        ).fetchall()
        codes = vectors.sign_codes(b"".join(r[1] for r in rows), dims)
        append_codes(conn, scope, embed_model, dims, [r[0] for r in rows], codes)


class Entry(NamedTuple):
    id: int
    scope: str
    exact_key: str
    namespace: str
    model: str
    system: str | None
    options: dict[str, Any]
    format: Any
    query: str
    response: str
    embed_model: str | None
    dims: int | None
    created_at: float
    ttl: float | None
    expires_at: float | None
    hits: int
    last_hit_at: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    generation_s: float | None
    done_reason: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Entry:
        return cls.from_dict(dict(row))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        data["options"] = json.loads(data["options"] or "{}")
        data["format"] = json.loads(data["format"]) if data["format"] else None
        data["metadata"] = json.loads(data["metadata"] or "{}")
        return cls(**data)

    @property
    def saved_tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


@dataclass
class NewEntry:
    """An answer to store, with what Ollama's final chunk said about it."""

    scope: str
    exact_key: str
    namespace: str
    model: str
    system: str | None
    options: dict[str, Any]
    format: Any
    query: str
    response: str
    created_at: float
    ttl: float | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    generation_s: float | None = None
    done_reason: str | None = None
    metadata: dict[str, Any] | None = None
    embed_model: str | None = None
    vector: bytes | None = None
    dims: int | None = None

    def column_values(self) -> tuple[Any, ...]:
        """The values of ENTRY_COLUMNS for this answer: a new entry has no hits yet."""
        has_vector = self.vector is not None
        return (
            self.scope, self.exact_key, self.namespace, self.model, self.system,
            json.dumps(self.options, sort_keys=True),
            json.dumps(self.format) if self.format is not None else None,
            self.query, self.response,
            self.embed_model if has_vector else None, self.dims if has_vector else None,
            self.created_at, self.ttl, None if self.ttl is None else self.created_at + self.ttl,
            0, None, self.prompt_tokens, self.completion_tokens, self.generation_s, self.done_reason,
            json.dumps(self.metadata or {}, sort_keys=True),
        )


def _create_private_file(path: Path, create_parent: bool) -> None:
    parent = path.parent
    if not parent.is_dir():
        if not create_parent:
            raise UsageError(f"database directory {parent} does not exist (create it, or pick another --db)")
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
        except FileExistsError:
            pass  # another process created it first
        except OSError as exc:
            raise StoreError(f"cannot create database {path}: {exc.strerror}") from None


class Store:
    """One connection per process to the cache file."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, create_parent: bool = False, warn: Callable[[str], None] | None = None) -> Store:
        path = Path(path)
        if path.is_dir():
            raise UsageError(f"database path {path} is a directory")
        _create_private_file(path, create_parent)
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"cannot read and write the database {path}: permission denied "
                             "(semcache writes on every ask; check the file's owner and mode)")
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.row_factory = sqlite3.Row
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a usable SQLite database ({exc}); pick another --db") from None
        store = cls(conn, path)
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{path} was written by a newer semcache (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade semcache or use another --db"
            )
        try:
            if version < SCHEMA_VERSION:
                store._migrate_when_free()
            conn.execute("PRAGMA synchronous=NORMAL")
            # Pages read in place from the OS page cache, not copied in by a read() each:
            # the re-rank reads 256 scattered 16 KB pages per lookup (measured 1.9 -> 1.0 ms).
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot prepare database {path}: {exc}") from None
        if warn is not None and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            warn(f"{path} is readable by other users and holds your prompts: chmod 600 {path}")
        return store

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
        if self.conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            self.conn.execute("PRAGMA page_size=16384")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db = sqlite_utils.Database(self.conn, execute_plugins=False)
                _migrations().apply(db)
                self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION:d}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    # -- reads -------------------------------------------------------------------------

    def find_exact(self, scope: str, key: str) -> Entry | None:
        row = self.conn.execute(
            "SELECT * FROM entries WHERE scope = ? AND exact_key = ?", (scope, key)
        ).fetchone()
        return Entry.from_row(row) if row else None

    def get(self, entry_id: int) -> Entry | None:
        row = self.conn.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return Entry.from_row(row) if row else None

    def search_codes(self, scope: str, embed_model: str, dims: int) -> tuple[bytes, bytes]:
        """Ids (<i8) and sign codes of every vector of the scope, embedding model and
        dimension, from a few chunk rows. May hold ids deleted since, and old codes of
        re-stored entries: callers re-rank with `vectors_by_id`, which has neither."""
        rows = self.conn.execute(
            "SELECT ids, codes FROM search_chunks WHERE scope = ? AND embed_model = ? AND dims = ? ORDER BY chunk",
            (scope, embed_model, dims),
        ).fetchall()
        return b"".join(r[0] for r in rows), b"".join(r[1] for r in rows)

    def vectors_by_id(self, ids: list[int], scope: str, embed_model: str, dims: int) -> tuple[list[int], bytes]:
        """The float vectors of these entries that still exist in this scope, model and dims."""
        found: list[int] = []
        blobs: list[bytes] = []
        cursor = self.conn.cursor()
        cursor.row_factory = None  # plain tuples: sqlite3.Row objects cost 0.1 ms per 256 here
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            # Unary + keeps the planner on the primary key: through the (scope, embed_model,
            # dims) index each id costs two b-tree searches (measured 0.88 vs 0.48 ms for 256).
            rows = cursor.execute(
                f"SELECT entry_id, vector FROM entry_vectors WHERE entry_id IN ({', '.join('?' for _ in batch)}) "
                "AND +scope = ? AND +embed_model = ? AND +dims = ?", (*batch, scope, embed_model, dims),
            ).fetchall()
            found.extend(r[0] for r in rows)
            blobs.extend(r[1] for r in rows)
        return found, b"".join(blobs)

    def vectors(self, scope: str, embed_model: str, dims: int) -> tuple[list[int], bytes]:
        """Every float32 vector of a scope, embedding model and dimension: the exact
        scan that the two-pass search is checked against (tests, bench), not a hot path."""
        rows = self.conn.execute(
            "SELECT entry_id, vector FROM entry_vectors WHERE scope = ? AND embed_model = ? AND dims = ?",
            (scope, embed_model, dims),
        ).fetchall()
        return [r[0] for r in rows], b"".join(r[1] for r in rows)

    # -- writes ------------------------------------------------------------------------

    def transaction(self) -> _WriteTransaction:
        return _WriteTransaction(self.conn)

    def record_hit(self, entry_id: int, now: float, request: dict[str, Any]) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE entries SET hits = hits + 1, last_hit_at = ? WHERE id = ?", (now, entry_id)
            )
            self._insert_request(request)

    def log_request(self, request: dict[str, Any]) -> None:
        with self.transaction():
            self._insert_request(request)

    def store_answer(self, new: NewEntry, request: dict[str, Any] | None = None, claim_owner: str | None = None) -> int:
        """Upsert on (scope, exact key): a fresh answer replaces the old one, same id. With
        claim_owner, that single-flight claim on the question goes in the same transaction:
        waiters see the answer and the free claim at once, and a miss commits once."""
        with self.transaction():
            if claim_owner is not None:
                self.conn.execute("DELETE FROM claims WHERE scope = ? AND exact_key = ? AND owner = ?",
                                  (new.scope, new.exact_key, claim_owner))
            entry_id = self.conn.execute(
                INSERT_ENTRY + """
                ON CONFLICT (scope, exact_key) DO UPDATE SET
                    namespace = excluded.namespace, model = excluded.model,
                    system = excluded.system, options = excluded.options,
                    format = excluded.format, query = excluded.query,
                    response = excluded.response, embed_model = excluded.embed_model,
                    dims = excluded.dims, created_at = excluded.created_at, ttl = excluded.ttl,
                    expires_at = excluded.expires_at, hits = 0, last_hit_at = NULL,
                    prompt_tokens = excluded.prompt_tokens,
                    completion_tokens = excluded.completion_tokens,
                    generation_s = excluded.generation_s, done_reason = excluded.done_reason,
                    metadata = excluded.metadata
                RETURNING id
                """,
                new.column_values(),
            ).fetchone()[0]
            if new.vector is not None:
                self.conn.execute(
                    "INSERT OR REPLACE INTO entry_vectors (entry_id, scope, embed_model, dims, vector) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (entry_id, new.scope, new.embed_model, new.dims, new.vector),
                )
                from semcache_cli import vectors

                code = vectors.sign_code(vectors.decode(new.vector))
                append_codes(self.conn, new.scope, new.embed_model or "", new.dims or 0, [entry_id], [code])
            else:
                # The old answer's vector belongs to the old row state; drop it.
                self.conn.execute("DELETE FROM entry_vectors WHERE entry_id = ?", (entry_id,))
            if request is not None:
                self._insert_request({**request, "entry_id": entry_id})
        return int(entry_id)

    def store_many(self, news: list[NewEntry]) -> list[int]:
        """Insert many new answers (new exact keys, one scope/model/dims per vector group)
        in one transaction: for warming and benchmark caches, where per-answer
        transactions and chunk rewrites would dominate. Returns their ids."""
        from semcache_cli import vectors

        ids: list[int] = []
        with self.transaction():
            for new in news:
                ids.append(self.conn.execute(
                    INSERT_ENTRY + " RETURNING id",
                    new.column_values(),
                ).fetchone()[0])
            with_vectors = [(i, n) for i, n in zip(ids, news, strict=True) if n.vector is not None]
            self.conn.executemany(
                "INSERT INTO entry_vectors (entry_id, scope, embed_model, dims, vector) VALUES (?, ?, ?, ?, ?)",
                [(i, n.scope, n.embed_model, n.dims, n.vector) for i, n in with_vectors],
            )
            groups: dict[tuple[str, str, int], list[tuple[int, bytes]]] = {}
            for entry_id, new in with_vectors:
                groups.setdefault((new.scope, new.embed_model or "", new.dims or 0), []).append((entry_id, new.vector or b""))
            for (scope, embed_model, dims), members in groups.items():
                codes = vectors.sign_codes(b"".join(v for _, v in members), dims)
                append_codes(self.conn, scope, embed_model, dims, [i for i, _ in members], codes)
        return ids

    def compact_search(self) -> None:
        """Drop ids of deleted entries and superseded codes from the search chunks (after
        a purge), rewriting only the groups that hold any."""
        groups = self.conn.execute("SELECT scope, embed_model, dims, sum(count) FROM search_chunks "
                                   "GROUP BY scope, embed_model, dims").fetchall()
        for scope, embed_model, dims, listed in groups:
            live = self.conn.execute("SELECT count(*) FROM entry_vectors WHERE scope = ? AND embed_model = ? "
                                     "AND dims = ?", (scope, embed_model, dims)).fetchone()[0]
            if live == listed:
                continue
            with self.transaction():
                ids, codes = self.search_codes(scope, embed_model, dims)
                live_ids = {r[0] for r in self.conn.execute(
                    "SELECT entry_id FROM entry_vectors WHERE scope = ? AND embed_model = ? AND dims = ?",
                    (scope, embed_model, dims))}
                width = len(codes) // max(1, listed)
                kept: dict[int, bytes] = {}  # the last code of an id is its current vector's
                for i in range(listed):
                    entry_id = int.from_bytes(ids[8 * i:8 * i + 8], "little", signed=True)
                    if entry_id in live_ids:
                        kept[entry_id] = codes[width * i:width * (i + 1)]
                self.conn.execute("DELETE FROM search_chunks WHERE scope = ? AND embed_model = ? AND dims = ?",
                                  (scope, embed_model, dims))
                append_codes(self.conn, scope, embed_model, dims, list(kept), list(kept.values()))

    def _insert_request(self, request: dict[str, Any]) -> None:
        row = {column: request.get(column) for column in REQUEST_COLUMNS}
        if row["at"] is None:
            row["at"] = time.time()
        placeholders = ", ".join("?" for _ in REQUEST_COLUMNS)
        self.conn.execute(
            f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({placeholders})",
            tuple(row.values()),
        )


class _WriteTransaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front (waiting out the busy
    timeout) so a transaction never fails half-way on a lock upgrade."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot write to the cache database: {exc}") from None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as commit_exc:
                self.conn.execute("ROLLBACK")
                raise StoreError(f"cannot write to the cache database: {commit_exc}") from None
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot write to the cache database: {exc}") from None
