"""The SQLite backend's own file: schema, migrations, permissions, the byte layout of
vectors. What every backend must do is tested in test_store_contract.py."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import calibrated, db_rows, run_cli
from fake_ollama import FakeOllama

from semcache_cli import vectors
from semcache_cli.errors import StoreError, UsageError
from semcache_cli.storage.models import LogRow, NewEntry
from semcache_cli.storage.sqlite import SQLiteStore as Store
from semcache_cli.storage.sqlite_schema import SCHEMA_VERSION


def new_entry(query: str = "q", response: str = "a", vector: np.ndarray | None = None, **kw: object) -> NewEntry:
    fields = dict(scope="s1", exact_key=f"k-{query}", namespace="default", model="llama3.2", system=None,
                  options={}, format=None, query=query, response=response, created_at=1000.0, ttl=3600.0,
                  done_reason="stop", completion_tokens=12, prompt_tokens=5, generation_s=2.5)
    if vector is not None:
        fields.update(embed_model="all-minilm:latest", vector=vector)
    fields.update(kw)
    return NewEntry(**fields)  # type: ignore[arg-type]


def test_fresh_database_is_private_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "cache.db"
    store = Store.open(path, create_parent=True)
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    applied = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = 'semcache'")]
    assert applied == ["m001_initial", "m002_claims", "m003_request_query", "m004_search_chunks", "m005_short_keys",
                       "m006_claims_without_rowid", "m007_calibrations", "m008_reference_vectors",
                       "m009_exact_keys"]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"entries", "entry_vectors", "requests", "claims"} <= tables


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store.open(path)
    entry_id = store.store_answer(new_entry())
    store.close()
    store = Store.open(path)
    assert store.get(entry_id).response == "a"  # type: ignore[union-attr]
    assert len(db_rows(path, "SELECT * FROM _sqlite_migrations")) == SCHEMA_VERSION == 9


def test_a_version_1_file_is_upgraded_in_place_keeping_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store.open(path)
    entry_id = store.store_answer(new_entry(query="kept", vector=vectors.unit_vector([3.0, -4.0])))
    store.close()
    conn = sqlite3.connect(path)  # turn it back into what semcache 0.1 wrote
    conn.execute("DROP TABLE claims")
    conn.execute("DROP TABLE search_chunks")
    conn.execute("DROP TABLE calibrations")
    conn.execute("DROP TABLE reference_vectors")
    conn.execute("DROP INDEX entry_vectors_model")
    conn.execute("ALTER TABLE requests DROP COLUMN query")
    conn.execute("ALTER TABLE requests DROP COLUMN cosine")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name != 'm001_initial'")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = Store.open(path)
    assert store.get(entry_id).query == "kept"  # type: ignore[union-attr]
    assert db_rows(path, "PRAGMA user_version")[0][0] == SCHEMA_VERSION == 9
    chunk = db_rows(path, "SELECT ids, codes FROM search_chunks")  # derived from the old vectors
    assert np.frombuffer(chunk[0]["ids"], "<i8").tolist() == [entry_id] and chunk[0]["codes"] == bytes([0b10000000])
    assert db_rows(path, "SELECT count(*) FROM claims")[0][0] == 0
    assert "WITHOUT ROWID" in db_rows(path, "SELECT sql FROM sqlite_master WHERE name = 'claims'")[0][0]
    assert db_rows(path, "SELECT count(query) FROM requests")[0][0] == 0
    store.close()


def test_explicit_path_in_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        Store.open(tmp_path / "missing" / "c.db")
    assert not (tmp_path / "missing").exists()


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer semcache"):
        Store.open(path)
    assert path.read_bytes() == before


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store.open(path)
    assert path.read_bytes() == before


def test_stored_vectors_are_little_endian_float32_unit_length(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    store.store_answer(new_entry(vector=vectors.unit_vector([3.0, 4.0])))
    blob = db_rows(store.path, "SELECT vector FROM entry_vectors")[0][0]
    assert np.frombuffer(blob, "<f4").tolist() == pytest.approx([0.6, 0.8])


def test_top_matches_orders_by_cosine() -> None:
    rows = [vectors.unit_vector(v) for v in ([1, 0], [0.8, 0.6], [0, 1], [-1, 0])]
    query = vectors.unit_vector([1, 0.1])
    found = vectors.top_matches(query, [10, 11, 12, 13], b"".join(vectors.encode(r) for r in rows), k=2)
    assert [i for i, _ in found] == [10, 11]
    assert found[0][1] == pytest.approx(float(np.dot(query, rows[0])), abs=1e-6)


def test_deleting_an_entry_row_deletes_its_vector_row(tmp_path: Path) -> None:
    # The trigger: entries deleted by another tool (or by hand) take their vectors along.
    store = Store.open(tmp_path / "c.db")
    store.store_answer(new_entry(vector=vectors.unit_vector([0, 1, 0])))
    conn = sqlite3.connect(tmp_path / "c.db")
    conn.execute("DELETE FROM entries")
    conn.commit()
    conn.close()
    assert db_rows(tmp_path / "c.db", "SELECT count(*) FROM entry_vectors")[0][0] == 0
    store.close()


def test_a_cache_written_with_full_length_keys_keeps_answering(ollama: FakeOllama, isolated_env: Path) -> None:
    question, paraphrase = "How do I reset my password?", "how do I reset my password please"
    run_cli("ask", question)
    conn = sqlite3.connect(isolated_env)  # back to schema 4: 64-character scope hashes and exact keys
    for table, key in (("entries", True), ("entry_vectors", False), ("search_chunks", False), ("requests", True)):
        conn.execute(f"UPDATE {table} SET scope = scope || '{'a' * 48}'"
                     + (f", exact_key = exact_key || '{'b' * 32}'" if key else ""))
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_short_keys'")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    calibrated(isolated_env)  # opens the file (migrating it) and turns the semantic layer on
    assert "exact hit" in run_cli("ask", question).stderr
    assert "semantic hit" in run_cli("ask", paraphrase).stderr
    assert ollama.counts["/api/chat"] == 1
    for table in ("entries", "entry_vectors", "search_chunks", "requests"):
        assert {len(r[0]) for r in db_rows(isolated_env, f"SELECT scope FROM {table}")} == {16}, table
    assert {len(r[0]) for r in db_rows(isolated_env, "SELECT exact_key FROM entries")} == {32}


def test_a_file_from_before_the_calibrated_scale_gets_one_for_each_model(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = Store.open(path)
    rng = np.random.default_rng(3)
    store.store_many([new_entry(f"q{i}", vector=vectors.unit_vector(list(v))) for i, v in
                      enumerate(rng.standard_normal((40, 24)))])
    store.store_many([new_entry(f"few{i}", vector=vectors.unit_vector(list(v)), embed_model="nomic-embed-text:latest")
                      for i, v in enumerate(rng.standard_normal((5, 16)))])
    store.log_request(LogRow(at=1.7e9, path="semantic", entry_id=1, similarity=0.91))
    store.close()
    conn = sqlite3.connect(path)  # back to schema 6, as semcache before the scale wrote it
    conn.execute("DROP TABLE calibrations")
    conn.execute("DROP TABLE reference_vectors")
    conn.execute("DROP INDEX entry_vectors_model")
    conn.execute("ALTER TABLE requests DROP COLUMN cosine")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name IN ('m007_calibrations', 'm008_reference_vectors')")
    conn.execute("PRAGMA user_version = 6")
    conn.commit()
    conn.close()
    store = Store.open(path)
    scale = store.calibration("all-minilm:latest", 24)
    assert scale is not None and scale.ready and scale.vectors == 40
    assert scale.checked_at == 40  # its newest vector: growth is counted from there
    assert len(scale.directions) == 1 and scale.problem is None
    few = store.calibration("nomic-embed-text:latest", 16)  # too few for a scale: its cold state
    assert few is not None and not few.ready and few.vectors == 5
    store.close()
    assert [tuple(r) for r in db_rows(path, "SELECT similarity, cosine FROM requests")] == [(0.91, 0.91)]  # a cosine then
