"""What the answer-safety guards cost and buy, main's guards (before) against this
branch's (after), each beside the guards switched off:

1. Insert-on-miss at the defaults (`replay --simulate`'s own code, in process, calibrated
   scale, threshold 0.84) over CLINC150's 22,500 in-scope queries (real all-MiniLM
   vectors, ../shared/data, order `--shuffle 0`) and over a second public data set that is
   not CLINC, tuned on nothing (SNIPS 2017, 2,800 queries, made by bench/snips.py; skipped
   when absent). A hit is correct when the stored query has the same intent; on SNIPS
   also when it has the same intent *and* the same slot values (city, date, artist: what
   changes the answer of a cache). Targets: guards cost <= 2% of correct hits and never
   add wrong answers net.
2. The hard-case set (tests/data/hard_cases.*, real vectors): each pair alone in its own
   namespace of a cache with CLINC's scale, through the engine. Targets: pairs that must
   differ refused >= 95%, paraphrases served >= 90%.
3. The guards' cost per candidate pair (target <= 0.2 ms).

    python bench/guards.py [--snips DIR] [--before REF]

REF (default main) is the commit whose guards are "before": once this work is merged into
main, pass the commit before it (f905eed, where docs/guards.md's figures come from).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from calibration import clinc, hard_cases  # noqa: E402
from variants import BASE  # noqa: E402

from semcache_cli import config, guards  # noqa: E402
from semcache_cli.replay import simulate  # noqa: E402
from semcache_cli.replay_core import ReplayQuery  # noqa: E402

DEFAULT = config.DEFAULTS["threshold"]
CHECK = guards.check


def main_guards(ref: str) -> Callable[..., guards.Finding | None] | None:
    """The `check` of the guards at `ref`, as this branch's engine calls it."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:semcache_cli/guards.py"], capture_output=True,
                                check=True).stdout.decode()
    except subprocess.CalledProcessError:
        return None
    module = types.ModuleType("guards_before")
    exec(compile(source, f"{ref}:guards.py", "exec"), module.__dict__)

    def check(query: str, stored: str, enabled: tuple[str, ...]) -> guards.Finding | None:
        name = module.check(query, stored, enabled)
        return None if name is None else guards.Finding(name, "", "")
    return check


@contextmanager
def guarded_by(check: Callable[..., guards.Finding | None], seen: list[tuple[str, str]] | None = None) -> Iterator[None]:
    def recorded(query: str, stored: str, enabled: tuple[str, ...]) -> guards.Finding | None:
        if seen is not None:
            seen.append((query, stored))
        return check(query, stored, enabled)
    guards.check = recorded  # type: ignore[assignment]  # the engine looks it up on every candidate
    try:
        yield
    finally:
        guards.check = CHECK


def insert_on_miss(items: list[ReplayQuery], matrix: np.ndarray, guarded: bool,
                   same: Callable[[ReplayQuery, ReplayQuery], bool] | None = None) -> dict[str, Any]:
    settings = config.load_settings({"embed_model": "all-minilm", "db": "/nonexistent",
                                     "guards": "all" if guarded else "none"})
    report, rows = simulate(items, matrix, settings, DEFAULT)
    figures = report.as_dict()
    out = {"hits": figures["hits"]["total"], "correct": figures["correct_hits"], "wrong": figures["wrong_hits"],
           "fired": sum(n for reason, n in figures["misses"].items() if reason.startswith("guard:"))}
    if same is not None:  # a stricter sameness than the label
        by_line = {item.line: item for item in items}
        hits = [(by_line[r.line], by_line[r.matched]) for r in rows if r.hit and r.matched is not None]
        out["correct"] = sum(same(a, b) for a, b in hits)
        out["wrong"] = len(hits) - out["correct"]
    return out


def compare(name: str, items: list[ReplayQuery], matrix: np.ndarray, before: Callable[..., Any] | None,
            same: Callable[[ReplayQuery, ReplayQuery], bool] | None = None, seen: list[tuple[str, str]] | None = None) -> bool:
    off = insert_on_miss(items, matrix, guarded=False, same=same)
    runs = {}
    if before is not None:
        with guarded_by(before):
            runs["before"] = insert_on_miss(items, matrix, guarded=True, same=same)
    with guarded_by(CHECK, seen):
        runs["after"] = insert_on_miss(items, matrix, guarded=True, same=same)
    print(f"\n{name}: {len(items):,} queries, insert on miss at the defaults")
    print(f"{'guards':<15}{'hits':>7}{'correct':>9}{'wrong':>7}{'fired':>7}  cost of correct hits  wrong answers net")
    print(f"{'off':<15}{off['hits']:>7}{off['correct']:>9}{off['wrong']:>7}{'':>7}")
    ok = True
    for label, run in runs.items():
        cost = (off["correct"] - run["correct"]) / max(1, off["correct"])
        net = run["wrong"] - off["wrong"]
        print(f"{label:<15}{run['hits']:>7}{run['correct']:>9}{run['wrong']:>7}{run['fired']:>7}  {cost:>19.2%}  {net:>+17d}")
        if label == "after":
            ok = cost <= 0.02 and net <= 0
    print(f"  after: cost <= 2% and no wrong answers added: {'met' if ok else 'MISSED'}")
    return ok


def snips(directory: Path) -> tuple[list[ReplayQuery], np.ndarray, dict[int, tuple]]:
    rows = [json.loads(line) for line in (directory / "snips2017.jsonl").open()]
    vectors = np.load(directory / "snips2017.minilm.f16.npy").astype(np.float32)
    order = np.random.default_rng(0).permutation(len(rows))
    items = [ReplayQuery(int(i) + 1, rows[i]["text"], rows[i]["label"]) for i in order]
    slots = {int(i) + 1: tuple(map(tuple, rows[i]["slots"])) for i in order}
    return items, vectors[order], slots


def pairs(before: Callable[..., Any] | None, matrix: np.ndarray) -> bool:
    runs = {}
    if before is not None:
        with guarded_by(before):
            runs["before"] = hard_cases(BASE, matrix)
    runs["after"] = hard_cases(BASE, matrix)
    print("\nhard-case pairs (tests/data), each alone in a cache with CLINC's scale, at the defaults")
    ok = True
    for label, found in runs.items():
        refused = 1 - found["must_differ_served"] / found["must_differ"]
        served = found["paraphrases_served"] / found["paraphrases"]
        print(f"{label:<15} must differ refused {found['must_differ'] - found['must_differ_served']}/{found['must_differ']}"
              f" ({refused:.1%})   paraphrases served {found['paraphrases_served']}/{found['paraphrases']} ({served:.1%})")
        if label == "after":
            ok = refused >= 0.95 and served >= 0.90
    print(f"  after: refused >= 95% and served >= 90%: {'met' if ok else 'MISSED'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--snips", type=Path, help="directory of bench/snips.py's output")
    parser.add_argument("--before", default="main", help="git ref of the guards to compare with")
    args = parser.parse_args()
    before = main_guards(args.before)
    print(f"before: the guards at {args.before}" if before else f"no guards at {args.before!r}: after figures only")
    items, texts, matrix, index = clinc()
    per_item = matrix[[index[item.query] for item in items]].astype(np.float32)
    seen: list[tuple[str, str]] = []
    ok = compare("CLINC150 (in scope)", items, per_item, before, seen=seen)
    if args.snips is not None and (args.snips / "snips2017.jsonl").exists():
        s_items, s_matrix, slots = snips(args.snips)
        ok &= compare("SNIPS 2017, same intent", s_items, s_matrix, before)
        ok &= compare("SNIPS 2017, same intent and slot values", s_items, s_matrix, before,
                      same=lambda a, b: a.label == b.label and slots[a.line] == slots[b.line])
    else:
        print("\nSNIPS 2017: not found (python bench/snips.py CHECKOUT DIR, then --snips DIR)")
    ok &= pairs(before, matrix)
    ok &= cost(seen, before)
    print("\nall targets met" if ok else "\nsome target MISSED")


def cost(seen: list[tuple[str, str]], before: Callable[..., Any] | None) -> bool:
    """Per candidate pair, over the pairs the CLINC run judged, each question new to the
    caches (as a process meets them): the best of five rounds, beside main's guards."""
    enabled = tuple(guards.GUARDS)
    timed = {"after": CHECK, **({"before": before} if before is not None else {})}
    best: dict[str, float] = {}
    for _ in range(5):
        for label, check in timed.items():
            guards.words.cache_clear()
            guards._entities.cache_clear()
            guards._quantities.cache_clear()
            start = time.perf_counter()
            for query, stored in seen:
                check(query, stored, enabled)
            best[label] = min(best.get(label, 1.0), (time.perf_counter() - start) / max(1, len(seen)))
    print(f"\nguard cost per candidate pair over the {len(seen):,} pairs CLINC's run judged (best of 5): "
          + ", ".join(f"{label} {t * 1e3:.3f} ms" for label, t in best.items()))
    met = best["after"] <= 0.0002
    print(f"  after <= 0.2 ms: {'met' if met else 'MISSED'}")
    return met


if __name__ == "__main__":
    main()
