"""The second data set of bench/guards.py: the SNIPS 2017 NLU benchmark (public, CC0;
github.com/sonos/nlu-benchmark, 2017-06-custom-intent-engines), 2,800 crowd-written
voice-assistant queries over 7 intents, each with its slot values (city, date, artist,
party size, ...), embedded with the real all-MiniLM-L6-v2 weights (bench/minilm.py).

    python bench/snips.py CHECKOUT OUT_DIR   # writes snips2017.jsonl, snips2017.minilm.f16.npy

CHECKOUT is a clone (or a bare mirror: files are read with `git show HEAD:...`) of the
repository. Each JSONL row: text, label (the intent), slots ([[slot, value], ...] sorted,
values in lower case), split.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

INTENTS = ("AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook", "SearchCreativeWork",
           "SearchScreeningEvent")


def rows(checkout: Path) -> list[dict]:
    out = []
    for intent in INTENTS:
        for split in ("train", "validate"):
            path = f"2017-06-custom-intent-engines/{intent}/{split}_{intent}.json"
            text = subprocess.run(["git", "-C", str(checkout), "show", f"HEAD:{path}"], capture_output=True,
                                  check=True).stdout.decode("utf-8")
            for query in json.loads(text)[intent]:
                parts = query["data"]
                out.append({"text": "".join(p["text"] for p in parts).strip(), "label": intent,
                            "slots": sorted([p["entity"], p["text"].strip().lower()] for p in parts if "entity" in p),
                            "split": split})
    return out


def main() -> None:
    checkout, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path.insert(0, str(Path(__file__).parent))
    from minilm import MiniLM

    found = rows(checkout)
    vectors = MiniLM().encode([r["text"] for r in found])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "snips2017.jsonl").write_text("".join(json.dumps(r) + "\n" for r in found))
    np.save(out_dir / "snips2017.minilm.f16.npy", vectors.astype(np.float16))
    print(f"{len(found)} queries, {vectors.shape[1]} dims -> {out_dir}")


if __name__ == "__main__":
    main()
