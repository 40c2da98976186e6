"""The SQLite store's schema: versioned migrations, applied once per file.

The version lives in `PRAGMA user_version`, one cheap read per process; the migrations
themselves are a sqlite-utils `Migrations` set, imported only to create or migrate a
file (sqlite-utils imports click and numpy, ~0.2 s). A shipped migration is never edited:
a change is a new one. A file from a newer semcache is refused, never rewritten.
"""

from __future__ import annotations

from typing import Any

from semcache_cli import policy

SCHEMA_VERSION = 9


def migration_set() -> Any:
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
            from semcache_cli.storage import sqlite_index

            sqlite_index.rebuild(db.conn)

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

    @migrations()
    def m007_calibrations(db: Any) -> None:
        # Each embedding model's calibrated scale (vectors.Calibration), the raw cosine
        # logged beside the calibrated score, and an index to count a model's vectors.
        db.execute(
            "CREATE TABLE calibrations (embed_model TEXT NOT NULL, dims INTEGER NOT NULL, vectors INTEGER NOT NULL, "
            "checked_at INTEGER NOT NULL, directions BLOB NOT NULL, offsets BLOB NOT NULL, median REAL NOT NULL, "
            "spread REAL NOT NULL, effective_dims REAL NOT NULL, identical REAL NOT NULL, "
            "PRIMARY KEY (embed_model, dims)) WITHOUT ROWID"
        )
        db.execute("CREATE INDEX entry_vectors_model ON entry_vectors (embed_model, dims)")
        db.table("requests").add_column("cosine", float)  # the models' scales follow (scales.rebuild_all)
        db.execute("UPDATE requests SET cosine = similarity")  # before the scale, the similarity was the cosine

    @migrations()
    def m008_reference_vectors(db: Any) -> None:
        # The reference questions' vectors of each embedding model (one row: all or none),
        # the cold start of its scale; and what each scale was made from. Apart from
        # entries: never served, listed or counted as one.
        db.execute(
            "CREATE TABLE reference_vectors (embed_model TEXT NOT NULL, dims INTEGER NOT NULL, "
            "fingerprint TEXT NOT NULL, vectors BLOB NOT NULL, PRIMARY KEY (embed_model, dims)) WITHOUT ROWID"
        )
        db.execute("ALTER TABLE calibrations ADD COLUMN reference INTEGER NOT NULL DEFAULT 0")
        db.execute("ALTER TABLE calibrations ADD COLUMN distinct_vectors INTEGER NOT NULL DEFAULT 0")

    @migrations()
    def m009_exact_keys(db: Any) -> None:
        # Exact keys made again from the stored questions under the normalisation that
        # merges only what cannot change the question (storage/rekey.py says how). The
        # request log keeps the keys its requests were made with; claims are moments.
        from semcache_cli.storage import rekey

        rekey.run(db.conn, "entries", "?")

    return migrations
