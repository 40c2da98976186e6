"""What the answer-safety guards buy on CLINC150's 1,200 out-of-scope queries asked of a
cache that holds all 22,500 in-scope ones (every hit is a wrong answer), guards off vs
on: on the calibrated scale (the default; the cache's scale estimated from 2,048 of its
vectors) at 0.80-0.88, and on the plain cosine at 0.80-0.95. The top five candidates are
judged in order, as `ask` judges them (on the calibrated scale: the best five by score of
the raw top 32). Reads ../shared/data directly; no server, no database.

    python bench/guards.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from semcache_cli import guards
from semcache_cli import vectors as calibration
from semcache_cli.engine import SEMANTIC_CANDIDATES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
THRESHOLDS = {"calibrated": (0.80, 0.84, 0.88), "cosine": (0.80, 0.85, 0.90, 0.95)}


def main() -> None:
    rows = [json.loads(line) for line in (DATA / "clinc150.jsonl").open()]
    vectors = np.load(DATA / "clinc150.minilm.f16.npy").astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    inscope = [i for i, r in enumerate(rows) if r["label"] != "oos"]
    oos = [i for i, r in enumerate(rows) if r["label"] == "oos"]
    stored = vectors[inscope].astype(np.float64)
    raw = vectors[oos].astype(np.float64) @ stored.T
    scale = calibration.estimate(stored[np.random.default_rng(0).choice(len(stored), 2048, replace=False)],
                                 len(stored), 0)
    directions = np.asarray(scale.directions, dtype=np.float64)
    stored_projections = stored @ directions.T
    raw_top = np.argsort(-raw, axis=1)[:, :calibration.RERANK]
    scored = {"cosine": (raw, np.argsort(-raw, axis=1)[:, :SEMANTIC_CANDIDATES]), "calibrated": ({}, [])}
    for row, candidates in enumerate(raw_top):  # as the engine: rescore the raw top 32, keep the best five
        query = vectors[oos[row]].astype(np.float64) @ directions.T
        s = calibration.calibrated_many(raw[row, candidates], query, stored_projections[candidates], scale)
        order = np.argsort(-s)[:SEMANTIC_CANDIDATES]
        scored["calibrated"][1].append(candidates[order])
        scored["calibrated"][0].update({(row, int(c)): float(v) for c, v in zip(candidates[order], s[order], strict=True)})
    enabled = tuple(guards.GUARDS)
    print(f"{len(oos)} out-of-scope queries against a cache of {len(inscope):,} in-scope ones (every hit is wrong)")
    checks, spent = 0, 0.0
    for name in ("calibrated", "cosine"):
        sims, top = scored[name]
        print(f"\n{name} threshold | wrong answers, guards off | wrong answers, guards on | removed")
        for threshold in THRESHOLDS[name]:
            off = on = 0
            for row, candidates in enumerate(top):
                above = [c for c in candidates if sims[row, c] >= threshold]
                off += bool(above)
                for c in above:
                    start = time.perf_counter()
                    fired = guards.check(rows[oos[row]]["text"], rows[inscope[c]]["text"], enabled)
                    spent += time.perf_counter() - start
                    checks += 1
                    if fired is None:
                        on += 1
                        break
            print(f"{threshold:.2f} | {off} ({off / len(oos):.1%}) | {on} ({on / len(oos):.1%}) | {off - on}")
    print(f"\nguard cost: {spent / max(1, checks) * 1e6:.0f} µs per candidate pair over {checks:,} pairs")


if __name__ == "__main__":
    main()
