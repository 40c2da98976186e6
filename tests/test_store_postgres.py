"""The PostgreSQL backend's own behaviour on a real server (what every backend must do
is in test_store_contract.py): the sign-code path and its scope filter, models of several
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
from code_scans import code_scans
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


@pytest.fixture
def codes_only(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The code path from 200 vectors, not 5,000, and no quiet fallback to an exact scan:
    every lookup must be answered by the sign codes. Returns how many were."""
    answered: list[int] = []
    by_codes = PostgresStore._by_codes

    def checked(self: PostgresStore, *args: object) -> list[tuple[int, float]]:
        found = by_codes(self, *args)
        answered.append(len(found))
        return found

    monkeypatch.setattr(postgres, "EXACT_UP_TO", 200)
    monkeypatch.setattr(PostgresStore, "_by_codes", checked)
    return answered


def test_a_large_scope_is_searched_through_its_sign_codes(pg: PostgresStore, codes_only: list[int]) -> None:
    rng = np.random.default_rng(5)
    big = unit_rows(rng, 3000, 64)
    ids = pg.store_many(answers("big", big))
    for other in ("s1", "s2", "s3"):  # other scopes share the table
        pg.store_many(answers(other, unit_rows(rng, 1000, 64)))
    extra = unit_rows(rng, 20, 64)
    singles = [pg.store_answer(one) for one in answers("big", extra, start=90_000)]  # stored one at a time
    agree = 0
    for _ in range(100):
        target = int(rng.integers(len(big)))
        query = near(big[target], rng, float(rng.uniform(0.8, 0.98)))
        found = pg.nearest("big", MODEL, query, 5)
        assert len(found) == 5 and all(f.id in ids or f.id in singles for f in found)  # never another scope
        exact = int((big @ np.asarray(query)).argmax())
        agree += found[0].id == ids[exact]
    assert agree >= 99, f"top-1 agreement with an exact scan {agree}/100"
    assert pg.nearest("big", MODEL, array("f", extra[3]), 1)[0].id == singles[3]
    assert codes_only == [5] * 100 + [1]  # every lookup answered by the codes, none by the fallback


@pytest.mark.parametrize(("percent", "rank", "scans"), [
    (postgres.RADIUS_SAMPLE_PERCENT, postgres.RADIUS_RANK, None),  # as shipped: the sample varies
    (100.0, 300, 1),  # a radius with more than enough codes within: one scan
    (100.0, 1, 2),  # within the nearest code's distance, too few: the scan again without the radius
    (0.0, 1, 1),  # no sample, no radius
])
def test_the_radius_keeps_exactly_the_nearest_codes(pg: PostgresStore, codes_only: list[int],
                                                    monkeypatch: pytest.MonkeyPatch, percent: float, rank: int,
                                                    scans: int | None) -> None:
    monkeypatch.setattr(postgres, "RADIUS_SAMPLE_PERCENT", percent)
    monkeypatch.setattr(postgres, "RADIUS_RANK", rank)
    rng = np.random.default_rng(11)
    big = unit_rows(rng, 6000, 384)
    ids = np.asarray(pg.store_many(answers("big", big)))
    pg.store_many(answers("other", unit_rows(rng, 2000, 384)))  # another scope on the same pages
    signs = big > 0
    for i in range(20):
        query = near(big[int(rng.integers(len(big)))], rng, float(rng.uniform(0.5, 0.98))) if i % 2 \
            else array("f", unit_rows(rng, 1, 384)[0])  # paraphrase-like, then novel
        hamming = (signs != (np.asarray(query) > 0)).sum(axis=1)
        last = np.sort(hamming)[postgres.CODE_CANDIDATES - 1]
        found = {n.id for n in pg.nearest("big", MODEL, query, postgres.CODE_CANDIDATES)}  # every candidate
        # the nearest codes of a full scan, however ties at the last distance fall
        assert set(ids[hamming < last]) <= found <= set(ids[hamming <= last])
        assert len(found) == postgres.CODE_CANDIDATES
        if scans is not None:
            assert code_scans(pg, "big", MODEL, query) == scans
    assert codes_only == [postgres.CODE_CANDIDATES] * 20


def test_the_migration_gives_stored_vectors_the_codes_the_store_writes(postgres_db: str) -> None:
    store = PostgresStore.open(postgres_db)
    rng = np.random.default_rng(8)
    store.store_many(answers("m", unit_rows(rng, 50, 384)))
    store.store_answer(answers("other scope", unit_rows(rng, 1, 384), start=500)[0])
    entry = store.get(1)
    assert entry is not None  # and one as copy imports it
    store.import_entries([(entry._replace(scope="imported", exact_key="imported-1"), array("f", unit_rows(rng, 1, 384)[0]))])
    written = store._conn.execute(f"SELECT entry_id, grp, code::text FROM {store._s}.entry_codes ORDER BY 1").fetchall()
    store._conn.execute(f"DROP TABLE {store._s}.entry_codes")  # back to schema 2, as the build before it left it
    store._conn.execute(f"UPDATE {store._s}.meta SET value = '2' WHERE key = 'schema_version'")
    store.close()
    store = PostgresStore.open(postgres_db)  # migrated: the codes made in SQL
    assert store._conn.execute(f"SELECT entry_id, grp, code::text FROM {store._s}.entry_codes ORDER BY 1").fetchall() \
        == written and len(written) == 52
    pages, visible = store._conn.execute("SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass",
                                         (f"{store._s}.entry_codes",)).fetchone()
    assert visible == pages > 0  # vacuumed: a scan need not check each row's visibility
    store.close()


def test_codes_written_by_the_build_before_are_padded_on_the_way_in(pg: PostgresStore, codes_only: list[int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Mid-upgrade, a process of the build before (schema 3) still writes codes without the
    # padding; one such code in a scope would make every code scan of it fail.
    rng = np.random.default_rng(12)
    matrix = unit_rows(rng, 400, 384)
    ids = pg.store_many(answers("mixed", matrix[:300]))
    unpadded = postgres._code_text
    monkeypatch.setattr(postgres, "_code_text", lambda vector: "".join("1" if x > 0 else "0" for x in vector))
    old = pg.store_many(answers("mixed", matrix[300:399], start=300))  # as the build before wrote them
    old.append(pg.store_answer(answers("mixed", matrix[399:], start=399)[0]))
    monkeypatch.setattr(postgres, "_code_text", unpadded)
    lengths = {r[0] for r in pg._conn.execute(f"SELECT DISTINCT length(code) FROM {pg._s}.entry_codes")}
    assert lengths == {postgres.CODE_BITS_AT_LEAST}
    for i in (5, 350, 399):
        found = pg.nearest("mixed", MODEL, array("f", matrix[i]), 3)
        assert found[0].id == (ids + old)[i] and found[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert codes_only == [3, 3, 3]


def test_libpq_options_in_the_url_reach_the_server(postgres_db: str) -> None:
    with PostgresStore.open(postgres_db + "&options=-c%20work_mem%3D7MB") as store:  # a space as libpq reads it
        assert store._conn.execute("SHOW work_mem").fetchone()[0] == "7MB"


def test_a_model_name_beyond_ascii_on_a_latin1_connection(postgres_db: str, codes_only: list[int]) -> None:
    store = PostgresStore.open(postgres_db + "&client_encoding=LATIN1")
    rng = np.random.default_rng(13)
    matrix = unit_rows(rng, 300, 64)
    ids = store.store_many(answers("é", matrix, model="modèle:latest"))
    found = store.nearest("é", "modèle:latest", array("f", matrix[7]), 2)
    assert found[0].id == ids[7] and codes_only == [2]  # found by the codes, not by the exact fallback
    store.close()


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


def test_models_of_several_dimensions_share_one_database(pg: PostgresStore, codes_only: list[int]) -> None:
    rng = np.random.default_rng(7)
    for dims, model in ((384, "all-minilm:latest"), (768, "nomic-embed-text:latest"), (2048, "big:latest"),
                        (4096, "huge:latest")):
        matrix = unit_rows(rng, 250, dims)  # above the lowered EXACT_UP_TO: through the codes
        ids = pg.store_many(answers(f"scope-{dims}", matrix, model=model))
        found = pg.nearest(f"scope-{dims}", model, array("f", matrix[3]), 2)
        assert found[0].id == ids[3] and found[0].cosine == pytest.approx(1.0, abs=1e-3)
        assert pg.nearest(f"scope-{dims}", "other-model:latest", array("f", matrix[3]), 2) == []
    assert codes_only == [2, 2, 2, 2]
    with psycopg.connect(pg._conninfo, autocommit=True) as conn:  # no ANN index to build or keep
        assert not conn.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE '%%USING hnsw%%'",
                                (pg.schema,)).fetchall()


def test_a_newer_schema_is_refused_and_left_untouched(postgres_db: str) -> None:
    PostgresStore.open(postgres_db).close()
    conninfo, schema, _ = postgres.parse_url(postgres_db)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=rf"written by a newer semcache \(schema 99, this one knows {postgres.SCHEMA_VERSION}\)"):
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
                                    "pip install '.[postgres]' in semcache's source tree "
                                    "(or pip install 'psycopg[binary]' pgvector)\n")


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
