"""semcache benchmarks: whole-process `semcache ask` at 10k-1M entries, the in-process
lookup, replay throughput, memory and store size, each beside its floor and the naive
baseline (embeddings as JSON rows, scanned in a Python loop), measured in the same run.

    python bench/run.py                       # 10k and 100k x 384 and 768, replay, naive
    python bench/run.py --sizes 1000000 --dims 768 --no-naive
    python bench/run.py --sizes "" --no-naive        # replay throughput only

Caches are built through the project's own store code (the store's store_many) in a scratch
directory; the test server (tests/fake_ollama.py) answers embeddings and chats at once,
so the numbers are semcache's own cost. Medians of --runs runs (default 5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_ollama import FakeOllama, load_clinc_table  # noqa: E402

from semcache_cli import policy, vectors  # noqa: E402
from semcache_cli.storage import scales  # noqa: E402
from semcache_cli.storage.models import NewEntry  # noqa: E402
from semcache_cli.storage.sqlite import SQLiteStore  # noqa: E402

EMBED = {384: "all-minilm", 768: "nomic-embed-text"}
SHARED = REPO.parent / "shared" / "data"
SEMCACHE = [sys.executable, "-m", "semcache_cli"]


def wall(cmd: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of a whole process, in ms (one warm-up run first)."""
    return walls([cmd], env, runs)[0]


def walls(cmds: list[list[str]], env: dict[str, str], runs: int) -> list[float]:
    """Median wall times of whole processes, in ms, run in turn (one warm-up round
    first): a case and its floor see the same moments of a noisy machine."""
    times: list[list[float]] = [[] for _ in cmds]
    for round_ in range(runs + 1):
        for cmd, taken in zip(cmds, times, strict=True):
            start = time.perf_counter()
            result = subprocess.run(cmd, env=env, capture_output=True, stdin=subprocess.DEVNULL, check=False)
            if round_:
                taken.append((time.perf_counter() - start) * 1000)
            if result.returncode != 0:
                raise SystemExit(f"{cmd} failed: {result.stderr.decode()}")
    return [statistics.median(t) for t in times]


def peak_rss_mb(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS of one process, measured from a fresh parent so nothing else counts."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True, "
             "stdin=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, check=True)
    return int(out.stdout) / 1024


def unit_rows(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    matrix = rng.standard_normal((n, dims), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def near(vector: np.ndarray, rng: np.random.Generator, cosine: float) -> np.ndarray:
    noise = rng.standard_normal(vector.size)
    noise -= noise @ vector * vector
    noise /= np.linalg.norm(noise)
    return (cosine * vector + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def build(db: Path, n: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """A cache of n entries in the default scope, through the store's store_many."""
    scope = policy.Scope("default", "llama3.2").hash
    store = SQLiteStore.open(db)
    matrix = unit_rows(rng, n, dims)
    now = time.time()
    for start in range(0, n, 20_000):
        part = range(start, min(n, start + 20_000))
        store.store_many([NewEntry(
            scope=scope, exact_key=policy.exact_key(f"stored question {i}"), namespace="default",
            model="llama3.2:latest", system=None, options={}, format=None, query=f"stored question {i}",
            response=f"A stored answer of a realistic length for question {i}. " * 4, created_at=now, ttl=None,
            prompt_tokens=20, completion_tokens=120, generation_s=3.0, done_reason="stop",
            embed_model=policy.canonical_model(EMBED[dims]), vector=matrix[i],
        ) for i in part])
    scales.rebuild_all(store)  # as `calibrate` after a bulk load: the scale ask would have made
    store.close()
    return matrix


def naive_db(path: Path, matrix: np.ndarray) -> None:
    """The tutorial layout: one JSON text column per embedding."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE embeddings (id INTEGER PRIMARY KEY, embedding TEXT)")
    conn.executemany("INSERT INTO embeddings (embedding) VALUES (?)",
                     ((json.dumps([round(float(x), 6) for x in row]),) for row in matrix))
    conn.commit()
    conn.close()


NAIVE = """
import json, math, sqlite3, sys
q = json.loads(sys.argv[2])
best, best_id = -2.0, None
for row_id, text in sqlite3.connect(sys.argv[1]).execute("SELECT id, embedding FROM embeddings"):
    v = json.loads(text)
    dot = sum(a * b for a, b in zip(q, v))
    cos = dot / (math.sqrt(sum(a * a for a in v)) * math.sqrt(sum(a * a for a in q)))
    if cos > best:
        best, best_id = cos, row_id
print(best_id, best)
"""

FLOOR = """
import sys
import numpy as np
m = np.load(sys.argv[1], mmap_mode="r")
q = np.load(sys.argv[2])
print(int((m @ q).argmax()))
"""


def in_process_lookup(db: Path, query: np.ndarray, dims: int, runs: int, path: str) -> tuple[float, int]:
    """The semantic layer alone, inside one process: codes, candidates, exact re-rank,
    on the numpy path or the plain-Python one (what a fresh ask on a small cache runs)."""
    store = SQLiteStore.open(db)
    scope, embed_model = policy.Scope("default", "llama3.2").hash, policy.canonical_model(EMBED[dims])
    query_vector = vectors.unit_vector(query.tolist())
    chosen = vectors.use_numpy
    vectors.use_numpy = lambda count: path == "numpy"  # type: ignore[assignment]
    times = []
    best = -1
    try:
        for _ in range(runs + 1):
            start = time.perf_counter()
            best = store.nearest(scope, embed_model, query_vector, 1)[0][0]
            times.append((time.perf_counter() - start) * 1000)
    finally:
        vectors.use_numpy = chosen  # type: ignore[assignment]
        store.close()
    return statistics.median(times[1:]), best


def agreement(db: Path, matrix: np.ndarray, dims: int, rng: np.random.Generator, count: int) -> tuple[float, float]:
    """Top-1 agreement of the fast path with an exact scan: paraphrase-like queries
    (cosine 0.5-0.98 to a stored entry) and random ones."""
    store = SQLiteStore.open(db)
    scope, embed_model = policy.Scope("default", "llama3.2").hash, policy.canonical_model(EMBED[dims])
    results = []
    for kind in ("near", "random"):
        same = 0
        for _ in range(count):
            if kind == "near":
                query = near(matrix[int(rng.integers(len(matrix)))], rng, float(rng.uniform(0.5, 0.98)))
            else:
                query = unit_rows(rng, 1, dims)[0]
            exact = int((matrix @ query).argmax()) + 1  # ids follow insertion order
            fast = store.nearest(scope, embed_model, query, 1)[0][0]
            same += fast == exact
        results.append(same / count)
    store.close()
    return results[0], results[1]


def text_and_vector_bytes(db: Path) -> int:
    conn = sqlite3.connect(db)
    text = conn.execute("SELECT sum(length(CAST(query AS BLOB)) + length(CAST(response AS BLOB))) FROM entries").fetchone()[0]
    vec = conn.execute("SELECT sum(length(vector)) FROM entry_vectors").fetchone()[0]
    conn.close()
    return int(text + vec)


def bench_size(n: int, dims: int, args: argparse.Namespace, server: FakeOllama, work: Path,
               floors: dict[str, float]) -> dict[str, object]:
    rng = np.random.default_rng(n + dims)
    db = work / f"cache-{n}-{dims}.db"
    started = time.perf_counter()
    matrix = build(db, n, dims, rng)
    built_s = time.perf_counter() - started
    env = {**os.environ, "SEMCACHE_DB": str(db), "OLLAMA_HOST": server.url, "SEMCACHE_EMBED_MODEL": EMBED[dims],
           "XDG_CONFIG_HOME": str(work / "no-config")}
    target = int(rng.integers(n))
    probe = near(matrix[target], rng, 0.93)
    question = f"a semantic bench query {target}"  # the same number as its stored neighbour: no guard fires
    server.table[question] = probe
    server.table[f"search_query: {question}"] = probe  # nomic-embed-text's task prefix
    for text, layer in ((f"stored question {target}", "exact"), (question, "semantic")):  # time what we think we time
        answer = subprocess.run([*SEMCACHE, "ask", "--json", "--no-store", text], env=env, capture_output=True)
        assert json.loads(answer.stdout)["source"] == layer, answer.stdout
    npy, qfile = work / f"floor-{n}-{dims}.npy", work / f"q-{dims}.npy"
    np.save(npy, matrix)
    np.save(qfile, probe)
    os.sync()  # an ask's own fsync must not flush the benchmark's files
    # each case beside its floor, measured in turn
    typer_ms, exact_ms, floor_ms, semantic_ms, miss_ms = walls([
        [sys.executable, "-c", "import typer"],
        [*SEMCACHE, "ask", "-q", f"stored question {target}"],
        [sys.executable, "-c", FLOOR, str(npy), str(qfile)],
        [*SEMCACHE, "ask", "-q", "--no-store", question],
        [*SEMCACHE, "ask", "-q", "--no-store", "a question nobody asked before"],
    ], env, args.runs)
    npy.unlink()
    lookups = {}
    for path in ("numpy", "python"):
        lookups[path], found = in_process_lookup(db, probe, dims, args.runs, path)
        assert found == target + 1, (path, found, target)
    row: dict[str, object] = {
        "n": n, "dims": dims, "build_s": round(built_s, 1),
        "exact_ms": exact_ms, "exact_floor_ms": typer_ms,
        "semantic_ms": semantic_ms, "semantic_floor_ms": floor_ms,
        "miss_ms": miss_ms, "lookup_ms": lookups["numpy"], "lookup_py_ms": lookups["python"],
        "db_mb": db.stat().st_size / 1e6, "text_vec_mb": text_and_vector_bytes(db) / 1e6,
    }
    row["agree_near"], row["agree_random"] = agreement(db, matrix, dims, rng, args.agreement)
    if args.rss:
        row["semantic_rss_mb"] = peak_rss_mb([*SEMCACHE, "ask", "-q", "--no-store", question], env)
    if args.naive and n <= args.naive_max:
        naive = work / f"naive-{n}-{dims}.db"
        naive_db(naive, matrix)
        query = json.dumps(probe.tolist())
        row["naive_ms"] = wall([sys.executable, "-c", NAIVE, str(naive), query], env, 1 if n > 20_000 else args.runs)
        naive.unlink()
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return row


def bench_replay(server: FakeOllama, work: Path, runs: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    if (SHARED / "clinc150.jsonl").exists():
        rows, table = load_clinc_table(str(SHARED))
        server.table.update(table)
        for text in table:
            server.embed_json("all-minilm", text)
        inscope = work / "inscope.jsonl"
        inscope.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"] != "oos"))
        env = {**os.environ, "OLLAMA_HOST": server.url, "SEMCACHE_DB": str(work / "unused.db")}
        ms = wall([*SEMCACHE, "replay", str(inscope), "--simulate", "--embed-model", "all-minilm", "--shuffle", "0"],
                  env, runs)
        figures["simulate_qps"] = 22_500 / (ms / 1000)
    questions = work / "live.txt"
    questions.write_text("".join(f"live replay question number {i} of the benchmark\n" for i in range(2000)))
    # The test server in a process of its own, as Ollama is: in this one it would share an
    # interpreter lock with the benchmark's own threads.
    own = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_ollama.py")], stdout=subprocess.PIPE, text=True)
    rates: dict[int, list[float]] = {4: [], 1: []}
    try:
        url = (own.stdout.readline() if own.stdout else "").strip()
        for i in range(runs):  # -j 4 and its -j 1 baseline in turn, each into a new cache
            for jobs, taken in rates.items():
                env = {**os.environ, "OLLAMA_HOST": url, "SEMCACHE_DB": str(work / f"live-{jobs}-{i}.db")}
                start = time.perf_counter()
                subprocess.run([*SEMCACHE, "replay", str(questions), "-j", str(jobs)], env=env, capture_output=True,
                               check=True)
                taken.append(2000 / (time.perf_counter() - start))
    finally:
        own.terminate()
        own.wait()
    figures["live_qps"], figures["live_j1_qps"] = statistics.median(rates[4]), statistics.median(rates[1])
    figures["live_min"], figures["live_max"] = min(rates[4]), max(rates[4])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dims", default="384,768")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--agreement", type=int, default=400, help="queries per agreement check")
    parser.add_argument("--no-naive", dest="naive", action="store_false")
    parser.add_argument("--naive-max", type=int, default=100_000)
    parser.add_argument("--no-replay", dest="replay", action="store_false")
    parser.add_argument("--rss", action="store_true", help="measure peak RSS of the semantic ask")
    args = parser.parse_args()

    server = FakeOllama().start()
    work = Path(tempfile.mkdtemp(prefix="semcache-bench-"))
    # Every process starts outside the repo: from its root, `python -m semcache_cli` would
    # import the source tree, compiled afresh on each start where bytecode is not written
    # (PYTHONDONTWRITEBYTECODE), not the installed package being measured (+40 ms measured).
    os.chdir(work)
    try:
        env = dict(os.environ)
        floors = {
            "python": wall([sys.executable, "-c", "pass"], env, args.runs),
            "typer": wall([sys.executable, "-c", "import typer"], env, args.runs),
            "numpy": wall([sys.executable, "-c", "import numpy"], env, args.runs),
        }
        print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"numpy {np.__version__}, SQLite {sqlite3.sqlite_version}; medians of {args.runs} runs, ms")
        print(f"floors: python -c pass {floors['python']:.0f}, import typer {floors['typer']:.0f}, "
              f"import numpy {floors['numpy']:.0f}")
        header = ("N", "dims", "exact", "x typer", "semantic", "floor", "x floor", "naive", "x naive", "miss",
                  "lookup np", "lookup py", "agree near", "agree rnd", "db MB", "x data", "RSS MB")
        print(" | ".join(header))
        for n in (int(x) for x in args.sizes.split(",") if x):
            for dims in (int(x) for x in args.dims.split(",")):
                r = bench_size(n, dims, args, server, work, floors)
                naive = r.get("naive_ms")
                print(" | ".join(str(x) for x in (
                    f"{n:,}", dims, f"{r['exact_ms']:.0f}", f"{r['exact_ms'] / r['exact_floor_ms']:.2f}",
                    f"{r['semantic_ms']:.0f}", f"{r['semantic_floor_ms']:.0f}",
                    f"{r['semantic_ms'] / r['semantic_floor_ms']:.2f}",
                    f"{naive:.0f}" if naive else "-", f"{naive / r['semantic_ms']:.0f}x faster" if naive else "-",
                    f"{r['miss_ms']:.0f}", f"{r['lookup_ms']:.1f}", f"{r['lookup_py_ms']:.1f}", f"{r['agree_near']:.1%}",
                    f"{r['agree_random']:.1%}", f"{r['db_mb']:.0f}", f"{r['db_mb'] / r['text_vec_mb']:.2f}",
                    f"{r['semantic_rss_mb']:.0f}" if "semantic_rss_mb" in r else "-",
                )), flush=True)
        if args.replay:
            figures = bench_replay(server, work, args.runs)
            print(f"replay --simulate, 22,500 CLINC queries, whole command: {figures.get('simulate_qps', 0):,.0f} q/s "
                  f"(target 2,000)")
            print(f"replay live, 2,000 new questions, whole command: -j 4 {figures['live_qps']:,.0f} q/s "
                  f"({figures['live_min']:,.0f}-{figures['live_max']:,.0f} over {args.runs} runs; target 200), "
                  f"-j 1 in the same runs {figures['live_j1_qps']:,.0f} q/s")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
