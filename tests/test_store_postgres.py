"""The PostgreSQL backend's own behaviour on a real server (what every backend must do
is in test_store_contract.py): the HNSW path and its scope filter, models of several
dimensions in one database, the schema's version, what a role without privileges is
told, secrets, and an unreachable or slow server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from array import array
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from conftest import REPO, postgres_url
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from semcache_cli import vectors
from semcache_cli.errors import StoreError, StoreUnreachable
from semcache_cli.storage import postgres
from semcache_cli.storage.models import NewEntry
from semcache_cli.storage.postgres import PostgresStore

MODEL = "all-minilm:latest"


def unit_rows(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    matrix = rng.standard_normal((n, dims)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def near(vector: np.ndarray, rng: np.random.Generator, cosine: float) -> array:
    noise = rng.standard_normal(vector.size)
    noise -= noise @ vector * vector
    noise /= np.linalg.norm(noise)
    return vectors.unit_vector(list(cosine * vector + np.sqrt(1 - cosine**2) * noise))


def answers(scope: str, matrix: np.ndarray, model: str = MODEL, start: int = 0) -> list[NewEntry]:
    return [NewEntry(scope=scope, exact_key=f"{scope}-{start + i}", namespace="default", model="llama3.2:latest",
                     system=None, options={}, format=None, query=f"q{start + i}", response="a", created_at=1.0,
                     ttl=None, embed_model=model, vector=array("f", row)) for i, row in enumerate(matrix)]


@pytest.fixture
def pg(postgres_db: str) -> Iterator[PostgresStore]:
    store = PostgresStore.open(postgres_db, timeout_s=60)
    yield store
    store.close()


def index_scans(store: PostgresStore) -> int:
    """Scans of the store's HNSW indexes, as the server counts them once the sessions that
    made them have ended (a live session reports its counts when it likes)."""
    with psycopg.connect(store._conninfo, autocommit=True) as conn:
        return int(conn.execute("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes "
                                "WHERE schemaname = %s AND indexrelname LIKE 'entry_vectors_hnsw_%%'",
                                (store.schema,)).fetchone()[0])


def test_a_large_scope_is_searched_through_its_hnsw_index(pg: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "EXACT_UP_TO", 200)  # the index path from 200 vectors, not 5,000
    rng = np.random.default_rng(5)
    big = unit_rows(rng, 3000, 64)
    ids = pg.store_many(answers("big", big))
    for other in ("s1", "s2", "s3"):  # other scopes share the table and the index
        pg.store_many(answers(other, unit_rows(rng, 1000, 64)))
    before = index_scans(pg)
    agree = 0
    for _ in range(100):
        target = int(rng.integers(len(big)))
        query = near(big[target], rng, float(rng.uniform(0.8, 0.98)))
        found = pg.nearest("big", MODEL, query, 5)
        assert len(found) == 5 and all(n.id in ids for n in found)  # never another scope
        exact = int((big @ np.asarray(query)).argmax())
        agree += found[0].id == ids[exact]
    assert agree >= 99, f"top-1 agreement with an exact scan {agree}/100"
    pg._conn.execute("SELECT pg_stat_force_next_flush()")  # PostgreSQL 15+: report at the next commit,
    pg._conn.commit()  # not only at the session's end, which a loaded machine can delay
    pg.close()
    deadline = time.monotonic() + 30
    while index_scans(pg) < before + 100 and time.monotonic() < deadline:  # the closed session's counts arrive
        time.sleep(0.1)
    assert index_scans(pg) >= before + 100  # the index answered them


def test_a_small_scope_among_many_others_gets_all_its_rows(pg: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A filtered ANN scan of a rare scope would return too few rows; semcache must not.
    rng = np.random.default_rng(6)
    pg.store_many(answers("crowd", unit_rows(rng, 4000, 32)))
    rare = unit_rows(rng, 7, 32)
    rare_ids = pg.store_many(answers("rare", rare, start=10_000))
    for forced in (postgres.EXACT_UP_TO, 3):  # exact as shipped; and the index path, forced
        monkeypatch.setattr(postgres, "EXACT_UP_TO", forced)
        for row in rare:
            found = pg.nearest("rare", MODEL, array("f", row), 5)
            assert len(found) == 5 and {n.id for n in found} <= set(rare_ids)
            assert found[0].cosine == pytest.approx(1.0, abs=1e-5)


def test_models_of_several_dimensions_share_one_database(pg: PostgresStore) -> None:
    rng = np.random.default_rng(7)
    for dims, model in ((384, "all-minilm:latest"), (768, "nomic-embed-text:latest"), (2048, "big:latest"),
                        (4096, "huge:latest")):  # halfvec index above 2,000; none above 4,000
        matrix = unit_rows(rng, 20, dims)
        ids = pg.store_many(answers(f"scope-{dims}", matrix, model=model))
        found = pg.nearest(f"scope-{dims}", model, array("f", matrix[3]), 2)
        assert found[0].id == ids[3] and found[0].cosine == pytest.approx(1.0, abs=1e-3)
        assert pg.nearest(f"scope-{dims}", "other-model:latest", array("f", matrix[3]), 2) == []
    with psycopg.connect(pg._conninfo, autocommit=True) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = %s "
                                              "AND indexname LIKE 'entry_vectors_hnsw_%%'", (pg.schema,))}
    if pg.pgvector >= (0, 7):
        assert len(indexes) == 3 and sum("halfvec(2048)" in d for d in indexes) == 1
    else:  # no halfvec before pgvector 0.7: above 2,000 dimensions every lookup is an exact scan
        assert len(indexes) == 2 and not any("2048" in d for d in indexes)
    assert all("USING hnsw" in d and "cosine_ops" in d for d in indexes)


def test_a_newer_schema_is_refused_and_left_untouched(postgres_db: str) -> None:
    PostgresStore.open(postgres_db).close()
    conninfo, schema, _ = postgres.parse_url(postgres_db)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"written by a newer semcache \(schema 99, this one knows 2\)"):
        PostgresStore.open(postgres_db)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute(f"SELECT value FROM \"{schema}\".meta").fetchone()[0] == "99"


def test_many_first_users_at_once_create_the_schema_once(postgres_db: str) -> None:
    code = ("import sys; from semcache_cli.storage.postgres import PostgresStore; "
            "s = PostgresStore.open(sys.argv[1]); print(s.count()); s.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, postgres_db], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=REPO) for _ in range(6)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err.decode() for _, err in results]
    assert {out.strip() for out, _ in results} == {b"0"}


@pytest.fixture
def limited_role(postgres_server: str) -> Iterator[tuple[str, str]]:
    """A role with no privileges of its own, and a new database without pgvector."""
    name = f"limited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
        conn.execute(f"CREATE DATABASE {name}")
    params = conninfo_to_dict(postgres_server)
    yield name, make_conninfo(**{**params, "user": name, "dbname": name})
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        conn.execute(f"DROP ROLE {name}")


def test_a_role_that_may_not_create_the_extension_is_told_what_to_ask_for(
        postgres_server: str, limited_role: tuple[str, str]) -> None:
    name, limited = limited_role
    url = "postgresql://?" + "&".join(f"{k}={v}" for k, v in conninfo_to_dict(limited).items())
    with pytest.raises(StoreError, match="ask the database's administrator to run CREATE EXTENSION vector"):
        PostgresStore.open(url)
    admin = make_conninfo(postgres_server, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    with pytest.raises(StoreError, match="may not create the schema semcache .* CREATE SCHEMA semcache AUTHORIZATION"):
        PostgresStore.open(url)
    with psycopg.connect(admin, autocommit=True) as conn:  # what the DBA provides; no superuser after that
        conn.execute(f"CREATE SCHEMA semcache AUTHORIZATION {name}")
    store = PostgresStore.open(url)
    store.store_answer(answers("s", unit_rows(np.random.default_rng(1), 1, 8))[0])
    assert store.count() == 1
    store.close()


def test_the_password_is_masked_wherever_the_store_is_named(postgres_server: str) -> None:
    with_password = postgres_url(postgres_server.replace("postgres:@", "postgres:hunter2-very-secret@"), "masked")
    store = PostgresStore.open(with_password)
    assert "hunter2" not in store.location and "postgres:***@" in store.location
    store.close()
    assert postgres.masked_url("postgresql://u@h/db?password=hunter2&sslmode=require") == \
        "postgresql://u@h/db?password=***&sslmode=require"
    with pytest.raises(StoreUnreachable) as refused:
        PostgresStore.open("postgresql://alice:hunter2-very-secret@127.0.0.1:1/cache", timeout_s=3)
    assert "hunter2" not in str(refused.value) and "alice:***@127.0.0.1:1" in str(refused.value)


def test_a_server_that_is_not_there_is_exit_6_in_one_line(tmp_path: object) -> None:
    env = {**os.environ, "SEMCACHE_DB": "postgresql://bob:pw-secret-9@127.0.0.1:1/cache"}
    for args in (["ask", "hello"], ["stats"], ["inspect"], ["purge", "--expired"]):
        proc = subprocess.run([sys.executable, "-m", "semcache_cli", *args], capture_output=True, env=env,
                              stdin=subprocess.DEVNULL, cwd=REPO, timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode == 6, (args, err)
        assert err.count("\n") == 1 and err.startswith("semcache: error: cannot reach the cache store "
                                                       "postgresql://bob:***@127.0.0.1:1/cache")
        assert "pw-secret-9" not in err and proc.stdout == b""


def test_without_the_extra_a_postgresql_url_is_one_line_and_exit_2() -> None:
    # psycopg hidden from the import system, as on an install without [postgres]
    code = ("import sys; sys.modules['psycopg'] = None; sys.argv = ['semcache', 'stats', '--db', "
            "'postgresql://u@h/db']; from semcache_cli.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.decode() == ("semcache: error: postgresql:// stores need the PostgreSQL extra: "
                                    "pip install 'semcache-cli[postgres]'\n")


def test_a_statement_is_bounded_by_the_timeout(pg: PostgresStore, postgres_db: str) -> None:
    entry_id = pg.store_answer(answers("s", unit_rows(np.random.default_rng(2), 1, 8))[0])
    store = PostgresStore.open(postgres_db, timeout_s=1)
    with psycopg.connect(pg._conninfo) as locker:  # holds the table locked, as a stuck migration might
        locker.execute(f'LOCK TABLE "{pg.schema}".entries IN ACCESS EXCLUSIVE MODE')
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match="did not answer within 1 s"):
            store.get(entry_id)
        assert time.monotonic() - started < 30  # bounded; not the default of minutes
    store.close()


def test_the_sqlite_path_never_imports_the_driver(tmp_path: object) -> None:
    code = ("import sys; sys.argv = ['semcache', 'stats']; from semcache_cli import cli\n"
            "try:\n    cli.app()\nexcept SystemExit:\n    pass\nprint('psycopg' in sys.modules, 'pgvector' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60, env=os.environ)
    assert proc.stdout.decode().strip().splitlines()[-1] == "False False", proc.stderr.decode()
