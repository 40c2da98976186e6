"""`semcache purge` on a large cache: what the data-based size accounting (issue 23: the
dry run is the real run) costs beside the build it replaced, measured in the same run.

    python bench/purge.py                      # 100k entries x 384 dims, against main
    python bench/purge.py --entries 20000 --base /path/to/other/checkout

Each command runs as a whole process on a copy of one cache built through the store's
own store_many; the baseline is the same command from another checkout (--base, default:
`git archive main` into a scratch directory). Medians of --runs runs. Prints the seconds
of each and the ratio to the baseline, and whether each dry run named the real run's
evictions (the baseline's did not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semcache_cli.storage.models import LogRow, NewEntry  # noqa: E402
from semcache_cli.storage.sqlite import SQLiteStore  # noqa: E402


def build(db: Path, n: int, dims: int) -> None:
    rng = np.random.default_rng(1)
    now = time.time()
    with SQLiteStore.open(db) as store:
        for start in range(0, n, 20_000):
            count = min(20_000, n - start)
            matrix = rng.standard_normal((count, dims)).astype(np.float32)
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
            store.store_many(NewEntry(
                scope="s", exact_key=f"k{start + i}", namespace="default", model="llama3.2:latest", system=None,
                options={}, format=None, query=f"question {start + i}", response="an answer " * (10 + (start + i) % 90),
                created_at=now - n + start + i, ttl=30 * 86400.0, embed_model="all-minilm:latest",
                vector=matrix[i]) for i in range(count))
        for i in range(0, n, 97):  # some entries used lately, scattered
            store.record_hit(i + 1, now - 10, LogRow(at=now - 10, path="exact"))
        store.checkpoint()


def run(tree: Path, db: Path, *args: str) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "SEMCACHE_DB": str(db)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "semcache_cli", "purge", *args, "--json", "--yes"],
                          capture_output=True, env=env, cwd=tree, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: purge {' '.join(args)} failed: {done.stderr.decode()}")
    return elapsed, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", type=Path, help="checkout to compare with (default: main, via git archive)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="semcache-bench-purge-"))
    try:
        base = args.base
        if base is None:
            base = work / "base"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", "main"], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        source = work / "source.db"
        build(source, args.entries, args.dims)
        with SQLiteStore.open(source) as store:
            bound = store.used_bytes() // 2
        print(f"cache: {args.entries:,} entries x {args.dims} dims, {source.stat().st_size / 1e6:.0f} MB; "
              f"--max-size {bound / 1e6:.1f} MB")
        cases = [("--expired (nothing expired)", ["--expired"]),
                 ("--max-size, dry run", ["--max-size", f"{bound}B", "--dry-run"]),
                 ("--max-size", ["--max-size", f"{bound}B"])]
        for label, case in cases:
            times: dict[str, list[float]] = {"this": [], "base": []}
            reports: dict[str, dict] = {}
            for _ in range(args.runs):
                for name, tree in (("this", REPO), ("base", base)):
                    db = work / f"{name}.db"
                    shutil.copy(source, db)
                    elapsed, reports[name] = run(tree, db, *case)
                    times[name].append(elapsed)
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
            this, other = statistics.median(times["this"]), statistics.median(times["base"])
            print(f"purge {label:28} this {this:6.2f} s   base {other:6.2f} s   ratio {this / other:4.2f}   "
                  f"evicted this {reports['this']['evicted']:,} base {reports['base']['evicted']:,}")
        dry_this = run(REPO, source, "--max-size", f"{bound}B", "--dry-run")[1]["evicted"]
        dry_base = run(base, source, "--max-size", f"{bound}B", "--dry-run")[1]["evicted"]
        print(f"dry run named: this {dry_this:,} (real run {reports['this']['evicted']:,}), "
              f"base {dry_base:,} (real run {reports['base']['evicted']:,})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
