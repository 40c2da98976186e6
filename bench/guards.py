"""What the answer-safety guards buy on CLINC150's 1,200 out-of-scope queries asked of a
cache that holds all 22,500 in-scope ones (every hit is a wrong answer), guards off vs
on, at thresholds 0.80-0.95. The top five candidates are judged in order, as `ask`
judges them. Reads ../shared/data directly; no server, no database.

    python bench/guards.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from semcache_cli import guards
from semcache_cli.engine import SEMANTIC_CANDIDATES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
THRESHOLDS = (0.80, 0.85, 0.90, 0.95)


def main() -> None:
    rows = [json.loads(line) for line in (DATA / "clinc150.jsonl").open()]
    vectors = np.load(DATA / "clinc150.minilm.f16.npy").astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    inscope = [i for i, r in enumerate(rows) if r["label"] != "oos"]
    oos = [i for i, r in enumerate(rows) if r["label"] == "oos"]
    sims = vectors[oos] @ vectors[inscope].T
    top = np.argsort(-sims, axis=1)[:, :SEMANTIC_CANDIDATES]
    enabled = tuple(guards.GUARDS)
    print(f"{len(oos)} out-of-scope queries against a cache of {len(inscope):,} in-scope ones (every hit is wrong)")
    print("threshold | wrong answers, guards off | wrong answers, guards on | removed")
    checks, spent = 0, 0.0
    for threshold in THRESHOLDS:
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
    print(f"guard cost: {spent / max(1, checks) * 1e6:.0f} µs per candidate pair over {checks:,} pairs")


if __name__ == "__main__":
    main()
