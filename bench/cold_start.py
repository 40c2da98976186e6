"""The cold start of the calibrated scale (issue 22): semantic hits from a cache's first
question, made on the reference questions shipped with semcache, against a scale an
oracle makes beforehand from 2,048 vectors of the same data, and against semcache before
(no semantic hit until 32 vectors of a model are stored).

CLINC150 insert-on-miss from an empty cache (`replay --simulate`'s own code, in process,
order `--shuffle 0`, default threshold, guards on), with the real all-MiniLM vectors and
the twelve synthetic variants of them (tests/variants.py; the reference questions' real
all-MiniLM vectors, tests/data/reference_questions.minilm.npy, go through the same
variant), over all 150 intents and over one domain alone (banking: a narrow cache must
not become less safe). Targets over the first 32, 100 and 500 queries: hits >= 80% of the
oracle's, no more wrong answers than it, wrong answers <= 0.5% of queries.

    python bench/cold_start.py            # every variant (~10 CPU-minutes; 2 processes)
    python bench/cold_start.py --quick    # base and the hardest variant of each level
    python bench/cold_start.py --full     # also the whole 22,500-query run, before and after
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from calibration import clinc  # noqa: E402
from variants import BASE, Transform, Variant, variants  # noqa: E402

from semcache_cli import config, replay, vectors  # noqa: E402
from semcache_cli.storage import scales  # noqa: E402

WINDOWS = (32, 100, 500)
BANKING = {"transfer", "transactions", "balance", "freeze_account", "pay_bill", "bill_balance", "bill_due",
           "interest_rate", "routing", "min_payment", "order_checks", "pin_change", "report_fraud", "account_blocked",
           "spending_history"}  # CLINC150's banking domain: 15 intents
DATA = REPO / "tests" / "data"


def reference_vectors() -> np.ndarray:
    made = json.loads((DATA / "reference_questions.minilm.json").read_text())
    if made["fingerprint"] != scales.fingerprint():
        sys.exit("tests/data/reference_questions.minilm.npy embeds other questions: run bench/reference_vectors.py")
    return np.load(DATA / "reference_questions.minilm.npy").astype(np.float64)


def windows(rows: list[Any]) -> dict[int, tuple[int, int]]:
    """(hits, wrong answers) over the first n queries, for each window."""
    out = {}
    for n in WINDOWS:
        hits = [r for r in rows[:n] if r.source in ("exact", "semantic")]
        out[n] = (len(hits), sum(1 for r in hits if r.matched_label != r.label))
    return out


def run(job: tuple[Variant, bool]) -> dict[str, Any]:
    variant, full = job
    items, _, matrix, index = clinc()
    transform = Transform(variant, matrix)
    vectors_of = transform(matrix).astype(np.float32)
    reference = scales.reference_matrix(list(transform(reference_vectors())), matrix.shape[1])
    settings = config.load_settings({"embed_model": "all-minilm", "db": "/nonexistent"})
    out: dict[str, Any] = {"variant": variant.name}
    for domain, chosen in (("all", items), ("banking", [i for i in items if i.label in BANKING])):
        per_item = vectors_of[[index[i.query] for i in chosen]]
        pool = per_item[np.random.default_rng(5).choice(len(per_item), vectors.CALIBRATION_SAMPLE, replace=False)]
        oracle = vectors.estimate(pool.astype(np.float64), len(pool), 0)
        first = chosen[:max(WINDOWS)]
        results = {}
        for name, ref, fixed in (("before", None, None), ("reference", reference, None), ("oracle", None, oracle)):
            with _fixed_scale(fixed):
                _, rows = replay.simulate(first, per_item[:len(first)], settings, settings.threshold, reference=ref)
            results[name] = windows(rows)
            out["lowest_cosine"] = min([out.get("lowest_cosine", 1.0), *served_cosines(rows)])
        out[domain] = results
    if full:
        per_item = vectors_of[[index[i.query] for i in items]]
        for name, ref in (("before", None), ("reference", reference)):
            report, rows = replay.simulate(items, per_item, settings, settings.threshold, reference=ref)
            figures = report.as_dict()
            out["lowest_cosine"] = min([out["lowest_cosine"], *served_cosines(rows)])
            out.setdefault("full", {})[name] = (figures["hit_rate"], figures["wrong_answer_rate"])
    return out


def served_cosines(rows: list[Any]) -> list[float]:
    """The raw cosines of the semantic hits served: how far above vectors.COSINE_FLOOR."""
    return [r.cosine for r in rows if r.source == "semantic" and r.cosine is not None]


class _fixed_scale:  # noqa: N801 (a context manager used as a statement)
    """replay.simulate with one scale from the start, never remade: the oracle's."""

    def __init__(self, scale: vectors.Calibration | None) -> None:
        self.scale = scale
        self.kept = replay._OnlineScale

    def __enter__(self) -> None:
        if self.scale is None:
            return
        scale = self.scale

        class Fixed(self.kept):  # type: ignore[misc, valid-type]
            def __init__(self, matrix: np.ndarray, reference: np.ndarray | None = None) -> None:
                super().__init__(matrix, None)
                self._made(scale)

            def stored(self, index: int) -> None:
                self.members.append(index)

        replay._OnlineScale = Fixed  # type: ignore[misc]

    def __exit__(self, *exc: object) -> None:
        replay._OnlineScale = self.kept  # type: ignore[misc]


def report(results: list[dict[str, Any]]) -> bool:
    ok = True
    print("\n## Cold start: hits / wrong answers over the first queries (before: no hit before 32 vectors)\n")
    print("| variant | cache | queries | before | reference questions | oracle (2,048 of its data) | target |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for domain in ("all", "banking"):
            for n in WINDOWS:
                (bh, bw), (h, w), (oh, ow) = (r[domain][k][n] for k in ("before", "reference", "oracle"))
                met = h >= 0.8 * oh and w <= ow and w <= 0.005 * n
                ok &= met
                print(f"| {r['variant']} | {domain} | {n} | {bh} / {bw} | {h} / {w} | {oh} / {ow} | "
                      f"{'met' if met else 'MISSED'} |")
    lowest = min(r["lowest_cosine"] for r in results)
    print(f"\nlowest raw cosine of a served semantic hit, any variant and run: {lowest:.3f} "
          f"(floor {vectors.COSINE_FLOOR}: {'never reached' if lowest >= vectors.COSINE_FLOOR else 'REACHED'})")
    for r in results:
        if "full" in r:
            (bh, bw), (h, w) = r["full"]["before"], r["full"]["reference"]
            print(f"\nfull run ({r['variant']}, 22,500 queries): before {100 * bh:.1f}% hits, {100 * bw:.2f}% wrong; "
                  f"with the reference questions {100 * h:.1f}% hits, {100 * w:.2f}% wrong")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="base and the hardest variant of each level")
    parser.add_argument("--full", action="store_true", help="also the whole run on the untransformed vectors")
    args = parser.parse_args()
    chosen = variants()
    if args.quick:
        chosen = [v for v in chosen if v is BASE or v.name.endswith("off4-amp12")]
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(run, [(v, args.full and v is BASE) for v in chosen]))
    ok = report(results)
    print(f"\n{len(results)} variants in {time.perf_counter() - started:.0f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
