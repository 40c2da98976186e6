"""Peak memory of `semcache replay --simulate` at 100k and 1M queries x 384 dims, beside
its floor (the interpreter with numpy and semcache imported) and, in the same run, the
same replay by an older revision of semcache (--before, from git).

    python bench/simulate_memory.py                          # 100k and 1M, this tree only
    python bench/simulate_memory.py --before f905eed         # and that revision beside it
    python bench/simulate_memory.py --sizes 100000 --thresholds 0.80:0.95:0.05

The queries are CLINC150's real queries (/work/shared/data), drawn with replacement in
a fixed order, JSONL with their labels, as a replay of a real log is: the same questions
come back. The test server (tests/fake_ollama.py) runs in a process of its own and serves
their real all-MiniLM vectors, so only semcache's process is measured (its peak RSS,
from a fresh parent's RUSAGE_CHILDREN). The target: at most 300 MB at 1M queries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TARGET_MB = 300
PROBE = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
         "done = subprocess.run(sys.argv[1:], capture_output=True, stdin=subprocess.DEVNULL); "
         "sys.stderr.write(done.stderr.decode()[-2000:]); sys.stdout.write(done.stdout.decode()); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - start, "
         "done.returncode)")


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, the command's stdout) of one process."""
    out = subprocess.run([sys.executable, "-c", PROBE, *cmd], env=env, capture_output=True, text=True, cwd=cwd)
    *body, last = out.stdout.rstrip("\n").split("\n")
    rss_kb, seconds, code = last.split()
    if code != "0":
        raise SystemExit(f"{' '.join(cmd[:6])} ... exited {code}: {out.stderr[-1000:]}")
    return int(rss_kb) / 1024, float(seconds), "\n".join(body)


def queries_file(work: Path, count: int) -> Path:
    rows = [json.loads(line) for line in (SHARED / "clinc150.jsonl").read_text().splitlines()]
    picked = np.random.default_rng(0).integers(0, len(rows), count)
    path = work / f"queries-{count}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in picked:
            handle.write(json.dumps({"query": rows[i]["text"], "label": rows[i]["label"]}) + "\n")
    return path


def tree(revision: str, work: Path) -> Path:
    """A checkout of `revision` (its semcache_cli only) in a scratch directory."""
    target = work / f"rev-{revision}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "semcache_cli"], capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--thresholds", default=None, help="a sweep, as --thresholds takes it")
    parser.add_argument("--before", default=None, metavar="REV", help="also measure this git revision")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="semcache-simmem-") as scratch:
        work = Path(scratch)
        server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_ollama.py"), "--clinc", str(SHARED)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            url = (server.stdout.readline() if server.stdout else "").strip()
            env = {**os.environ, "OLLAMA_HOST": url, "SEMCACHE_DB": str(work / "unused.db")}
            trees = [("this tree", REPO)] + ([(args.before, tree(args.before, work))] if args.before else [])
            floor, _, _ = measure([sys.executable, "-c", "import numpy, semcache_cli.replay"], env, REPO)
            print(f"floor (python + numpy + semcache_cli.replay imported): {floor:.0f} MB")
            sweep = ["--thresholds", args.thresholds] if args.thresholds else []
            for size in sizes:
                path = queries_file(work, size)
                for name, root in trees:
                    cmd = [sys.executable, "-m", "semcache_cli", "replay", str(path), "--simulate", "--embed-model",
                           "all-minilm", "--json", *sweep]
                    started = time.perf_counter()
                    rss, seconds, out = measure(cmd, env, root)
                    report = json.loads(out)["reports"][0]
                    print(f"{size:>9,} queries x 384 dims, {name:>9}: peak RSS {rss:7.0f} MB "
                          f"({rss / floor:5.1f}x the floor, target {TARGET_MB} MB: "
                          f"{'met' if rss <= TARGET_MB else 'MISSED'}), {seconds:6.1f} s, "
                          f"hit rate {report['hit_rate']:.3f}, wrong {report['wrong_hits']:,}, "
                          f"{time.perf_counter() - started:.0f} s wall", flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
