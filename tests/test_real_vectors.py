"""Semantic decisions on real embeddings: CLINC150 queries with their all-MiniLM vectors,
served by the test server's table mode (see ../shared/data/README.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, calibrated, clinc_sample, run_cli
from fake_ollama import FakeOllama, load_clinc_table

from semcache_cli import config, vectors
from semcache_cli.engine import open_engine, request_from
from semcache_cli.errors import CacheOnlyMiss
from semcache_cli.storage import scales

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "clinc150.jsonl").exists(), reason="shared/data not present")


@pytest.fixture(scope="module")
def clinc() -> tuple[list[dict], dict[str, np.ndarray]]:
    return load_clinc_table(str(SHARED_DATA))


@pytest.fixture
def table_server(ollama: FakeOllama, clinc: tuple[list[dict], dict[str, np.ndarray]]) -> Iterator[FakeOllama]:
    ollama.table.update(clinc[1])
    # The reference questions' real all-MiniLM vectors too: the cold start of the scale, as
    # all-minilm itself would embed them (bench/reference_vectors.py).
    reference = np.load(Path(__file__).parent / "data" / "reference_questions.minilm.npy").astype(np.float32)
    ollama.table.update(zip(scales.reference_questions(), reference, strict=True))
    yield ollama


def test_a_paraphrase_hits_and_another_intent_misses_through_the_cli(table_server: FakeOllama, clinc,
                                                                     isolated_env: Path) -> None:
    rows, table = clinc
    sample = clinc_sample(table)
    calibrated(isolated_env, "all-minilm", 384, sample=sample)  # a cache full of such questions
    scale = vectors.estimate(sample, len(sample), 0)
    directions = np.asarray([list(d) for d in scale.directions])
    # Chosen from the data, not by hand: the closest distinct pair of one intent, and
    # the query of another intent that is closest to it on the calibrated scale while
    # still below the default threshold.
    texts = sorted({r["text"] for r in rows if r["label"] == "book_hotel" and r["split"] == "train"})
    matrix = np.stack([table[t] for t in texts])
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -1)
    a, b = np.unravel_index(np.argmax(sims), sims.shape)
    first, paraphrase = texts[a], texts[b]
    others = sorted({r["text"] for r in rows if r["label"] not in ("book_hotel", "oos") and r["split"] == "train"})
    theirs = np.stack([table[t] for t in others]).astype(np.float64)
    mine = table[first].astype(np.float64)
    other_sims = vectors.calibrated_many(theirs @ mine, directions @ mine, theirs @ directions.T, scale)
    other = others[int(np.argmax(np.where(other_sims < 0.83, other_sims, -1)))]  # clear of float32 rounding

    run_cli("ask", first, "--embed-model", "all-minilm")
    hit = json.loads(run_cli("ask", paraphrase, "--embed-model", "all-minilm", "--json").stdout)
    assert (hit["source"], hit["entry_id"]) == ("semantic", 1)
    miss = json.loads(run_cli("ask", other, "--embed-model", "all-minilm", "--json").stdout)
    assert (miss["source"], miss["miss_reason"]) == ("model", "no_match")
    assert table_server.counts["/api/chat"] == 2


@pytest.mark.parametrize(("every", "threshold", "least_hits"), [
    (10, None, 0.25),  # 15 intents at the default threshold (plain cosine 0.85 served 44% here)
    (30, None, 0.10),  # 5 intents (13% measured): the scale reads a narrow cache's topics as the model's bias
    (30, 0.6, 0.45),  # ... and a lower calibrated threshold gives the hits back, as precise
])
def test_the_calibrated_threshold_reuses_same_intent_and_rejects_other_intents(
    table_server: FakeOllama, clinc, tmp_path: Path, every: int, threshold: float | None, least_hits: float
) -> None:
    rows, _ = clinc
    label_of = {r["text"]: r["label"] for r in rows}
    intents = sorted({r["label"] for r in rows if r["label"] != "oos"})[::every]  # spread alphabetically
    warm = [r["text"] for r in rows if r["split"] == "train" and r["label"] in intents]
    probes = [r["text"] for r in rows if r["split"] == "test" and r["label"] in intents][::2]
    strangers = [r["text"] for r in rows if r["split"] == "test" and r["label"] not in intents][:300:2]

    given = {"embed_model": "all-minilm", "db": str(tmp_path / "clinc.db")}
    settings = config.load_settings(given | ({} if threshold is None else {"threshold": threshold}))
    engine = open_engine(settings)

    def served_label(text: str) -> str | None:
        try:
            outcome = engine.ask(request_from(settings, text, cache_only=True))
        except CacheOnlyMiss:
            return None
        return label_of[outcome.response.removeprefix("This is the answer to: ")]

    try:
        for text in warm:  # insert on miss, exactly as users would fill it: the scale grows with it
            engine.ask(request_from(settings, text))
        served = [(label_of[t], served_label(t)) for t in probes]
        foreign = [served_label(t) for t in strangers]
    finally:
        engine.close()

    hits = [(want, got) for want, got in served if got is not None]
    correct = sum(want == got for want, got in hits)
    assert len(hits) / len(served) >= least_hits, f"same-intent hit rate {len(hits)}/{len(served)}"
    assert correct / len(hits) >= 0.97, f"precision {correct}/{len(hits)}"
    assert sum(got is not None for got in foreign) / len(foreign) <= 0.02
