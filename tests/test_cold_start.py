"""The calibrated scale from a cache's first question (issue 22): made from the reference
questions shipped with semcache, embedded once per model and kept apart from entries;
an embedding failure while making it degrades as before; and a scale no namespace,
flood or damaged row can break."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, run_cli, run_proc, stored
from fake_ollama import FakeOllama, load_clinc_table
from test_calibration import PARAPHRASE, Q, fill, questions, scales
from variants import Transform, variants

from semcache_cli import config
from semcache_cli.engine import AskRequest, judge, open_engine, request_from
from semcache_cli.errors import CacheOnlyMiss
from semcache_cli.policy import Scope
from semcache_cli.storage import scales as scale_store
from semcache_cli.storage.models import Entry

NOMIC = "nomic-embed-text:latest"
REFERENCE = len(scale_store.reference_questions())
DATA = Path(__file__).resolve().parent / "data"
needs_data = pytest.mark.skipif(not (SHARED_DATA / "clinc150.jsonl").exists(), reason="shared/data not present")


def test_the_reference_questions_are_many_varied_and_distinct() -> None:
    texts = scale_store.reference_questions()
    assert 300 <= REFERENCE <= 400 and len(set(texts)) == REFERENCE
    assert all(10 <= len(t) <= 120 and not t.startswith("#") for t in texts)


def test_a_brand_new_cache_serves_a_paraphrase_on_its_second_ask(ollama: FakeOllama, isolated_env: Path) -> None:
    first = run_cli("ask", Q)
    assert first.exit_code == 0
    said, status = first.stderr.splitlines()  # said once, beside the status line (-q: neither)
    assert said.startswith(f"semcache: calibrated {NOMIC} from {REFERENCE} reference questions, embedded once in ")
    assert status.startswith("semcache: miss (no_match)")
    assert ollama.counts["/api/embed"] == 2  # the question, then the reference questions in one batch
    hit = run_proc("ask", PARAPHRASE, "--json")  # another process: the scale is kept
    assert hit.exit_code == 0 and hit.stderr.startswith("semcache: semantic hit · entry 1 · similarity ")
    assert "reference questions" not in hit.stderr  # said once
    assert ollama.counts["/api/embed"] == 3  # not embedded again
    outcome = json.loads(hit.stdout)
    assert outcome["calibration"]["state"] == "ready"
    assert outcome["calibration"]["made_from"] == {"reference_questions": REFERENCE, "cache_vectors": 0}
    far = json.loads(run_cli("ask", "completely unrelated volcano eruption", "--json", "--no-store").stdout)
    assert (far["source"], far["miss_reason"]) == ("model", "no_match") and far["similarity"] < 0.5

    assert [e.query for e in stored(isolated_env)] == [Q]  # the reference questions are no entries
    figures = json.loads(run_cli("stats", "--json").stdout)
    assert figures["entries"]["total"] == 1
    (scale,) = figures["scales"]
    assert scale["made_from"] == {"reference_questions": REFERENCE, "cache_vectors": 0}
    assert scale["degraded"] == "made mostly from reference questions (0 of the cache's own vectors)"
    assert len(json.loads(run_cli("inspect", "--json").stdout)) == 1
    explained = run_cli("inspect", "--similar", PARAPHRASE)
    assert explained.stderr == (f"semcache: similarity scale (ready) made from {REFERENCE} reference questions and 0 of "
                                "the cache's distinct vectors\n")
    assert explained.stdout.splitlines()[-1].startswith("ask would serve entry 1 (semantic hit")


@pytest.mark.slow  # a new cache per pair on 13 variants
@needs_data
def test_a_close_paraphrase_is_served_on_a_brand_new_caches_second_ask_on_every_variant(
        ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> None:
    """Real all-MiniLM vectors of the reference questions and of hard-case paraphrase pairs
    at cosine 0.95 or more, through each synthetic "other model" (tests/variants.py): a
    new cache per variant, each pair in a namespace of its own (20 vectors stored in all,
    under the first mark of 32: every pair is judged on the scale of a brand-new cache),
    the second question asked by a new engine, cache-only."""
    assert json.loads((DATA / "reference_questions.minilm.json").read_text())["fingerprint"] == \
        scale_store.fingerprint()  # the vectors are of these questions
    reference = np.load(DATA / "reference_questions.minilm.npy").astype(np.float64)
    cases = json.loads((DATA / "hard_cases.json").read_text())
    raw = np.load(DATA / "hard_cases.minilm.npy").astype(np.float64)
    at = {text: i for i, text in enumerate(cases["texts"])}
    close = [p for p in cases["must_share"] if raw[at[p["a"]]] @ raw[at[p["b"]]] >= 0.95][::16]
    assert len(close) >= 10
    _, table = load_clinc_table(str(SHARED_DATA))
    clinc = np.stack([table[t] for t in sorted(table)]).astype(np.float64)
    missed = []
    for variant in variants():
        transform = Transform(variant, clinc)
        ollama.table.clear()
        ollama.table.update(zip(scale_store.reference_questions(), transform(reference), strict=True))
        ollama.table.update(zip(cases["texts"], transform(raw), strict=True))
        for n, pair in enumerate(close):
            settings = config.load_settings({"embed_model": "all-minilm", "db": str(tmp_path / variant.name),
                                             "namespace": f"pair{n}"}, env={"OLLAMA_HOST": ollama.url})
            with open_engine(settings) as engine:
                engine.ask(request_from(settings, pair["a"]))
            with open_engine(settings) as engine:
                try:
                    outcome = engine.ask(request_from(settings, pair["b"], cache_only=True))
                    assert outcome.source == "semantic" and outcome.calibration is not None
                    assert outcome.calibration.made_from == {"reference_questions": REFERENCE, "cache_vectors": 0}
                except CacheOnlyMiss:
                    missed.append((variant.name, pair["a"], pair["b"]))
    assert missed == []


def test_the_scale_takes_in_the_caches_own_vectors_as_they_double(ollama: FakeOllama, tmp_path: Path,
                                                                  isolated_env: Path) -> None:
    fill(tmp_path, questions(40))
    (scale,) = scales()
    assert (scale["estimated_from"], scale["made_from"]) == (32, {"reference_questions": REFERENCE,
                                                                  "cache_vectors": 32})
    assert scale["degraded"] is None
    assert ollama.counts["/api/embed"] == 2  # the questions in one batch, the reference questions once


def test_an_embedder_failure_while_calibrating_leaves_no_half_made_scale(ollama: FakeOllama,
                                                                          isolated_env: Path) -> None:
    ollama.faults.embed_status, ollama.faults.embed_status_after = (500, "model runner crashed"), 1
    first = run_proc("ask", Q)  # the question's vector comes back, the reference batch fails
    assert first.exit_code == 0, first.stderr
    assert (f"semcache: warning: could not calibrate {NOMIC} on the reference questions (" in first.stderr
            and "its semantic hits start at 32 stored questions" in first.stderr)
    assert [e.id for e in stored(isolated_env)] == [1]  # the answer is stored all the same
    conn = sqlite3.connect(isolated_env)
    assert conn.execute("SELECT count(*) FROM calibrations WHERE directions != x''").fetchone()[0] == 0
    assert conn.execute("SELECT length(vectors) FROM reference_vectors").fetchall() == [(0,)]  # failed: no vectors
    conn.close()
    ollama.faults.embed_status = None
    again = run_proc("ask", Q)  # the exact layer works; asks do not try the reference batch again
    assert again.stderr.startswith("semcache: exact hit") and "reference" not in again.stderr
    miss = run_proc("ask", PARAPHRASE, "--no-store")
    assert "miss (calibrating: semantic hits start at 32 questions stored with" in miss.stderr
    assert "for hits now, `semcache calibrate` embeds the reference questions again" in miss.stderr
    assert run_proc("calibrate").exit_code == 0  # tries again, and makes the scale
    hit = run_proc("ask", PARAPHRASE, "--no-store", "--json")
    assert json.loads(hit.stdout)["source"] == "semantic", hit.stderr


def test_cosine_scale_keeps_its_meaning_and_embeds_no_reference(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", "-q", Q, "--scale", "cosine")
    assert ollama.counts["/api/embed"] == 1
    hit = json.loads(run_cli("ask", PARAPHRASE, "--scale", "cosine", "--threshold", "0.9", "--json").stdout)
    assert hit["source"] == "semantic" and hit["similarity"] == hit["cosine"]
    assert ollama.counts["/api/embed"] == 2


# -- a scale no namespace, flood or damaged row can break -----------------------------------

def probe(*args: str) -> float:
    outcome = json.loads(run_cli("ask", PARAPHRASE, "--json", "--no-store", *args).stdout)
    assert outcome["source"] == "semantic" and outcome["calibration"]["state"] == "ready", outcome
    return float(outcome["similarity"])


def test_five_namespaces_asking_the_same_forty_questions_leave_the_scale_as_it_was(
        ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> None:
    texts = [Q, *questions(39)]
    fill(tmp_path, texts)
    before = probe()
    for n in range(1, 5):
        fill(tmp_path, texts, "-n", f"team{n}")
    (scale,) = scales()
    assert (scale["state"], scale["vectors"], scale["estimated_from"]) == ("ready", 200, 128)
    assert scale["made_from"] == {"reference_questions": REFERENCE, "cache_vectors": 40}  # each vector once
    assert scale["problem"] is None
    assert abs(probe() - before) <= 0.01
    assert abs(probe("-n", "team3") - before) <= 0.01


@pytest.mark.parametrize("reference", [True, False], ids=["reference", "own-vectors-alone"])
def test_one_question_in_a_thousand_namespaces_leaves_the_scale_ready(ollama: FakeOllama, tmp_path: Path,
                                                                      isolated_env: Path, reference: bool) -> None:
    if not reference:  # a model that failed on the reference questions: its own vectors alone make the scale
        for question in scale_store.reference_questions():
            ollama.table[f"search_query: {question}"] = np.zeros(768)
    fill(tmp_path, [Q, *questions(39)])
    before = probe()
    flood = tmp_path / "flood.jsonl"
    flood.write_text("".join(json.dumps({"query": "hello there", "namespace": f"ns{n}"}) + "\n" for n in range(1000)))
    assert run_cli("replay", str(flood), "-q", "-j", "1").exit_code == 0
    (scale,) = scales()
    assert (scale["state"], scale["vectors"], scale["estimated_from"]) == ("ready", 1040, 1024)
    assert scale["made_from"]["cache_vectors"] == 41 and scale["problem"] is None
    assert abs(probe() - before) <= 0.01
    if not reference:
        assert scale["degraded"] == "999 of 1040 stored vectors repeat others (each counted once)" or \
            scale["degraded"].endswith("repeat others (each counted once)")


@pytest.mark.parametrize(("damage", "made_again"), [
    ("UPDATE calibrations SET median = -50", True),  # the issue's: every question a hit, 500 of 500
    ("UPDATE calibrations SET median = -1.5", True),
    ("UPDATE calibrations SET directions = CAST(directions || directions AS BLOB)", True),
    ("UPDATE calibrations SET identical = 7", True),
    ("UPDATE calibrations SET vectors = 1000000000", True),  # more vectors than the store can hold
    ("UPDATE calibrations SET checked_at = 99999", True),
    ("UPDATE calibrations SET offsets = zeroblob(length(offsets))", False),  # a scale still: not worse
    ("UPDATE calibrations SET median = 0.999999", False),  # reads as a model that cannot tell questions apart
])
def test_a_damaged_calibrations_row_is_never_used(ollama: FakeOllama, tmp_path: Path, isolated_env: Path,
                                                   damage: str, made_again: bool) -> None:
    fill(tmp_path, [Q, *questions(39)])
    conn = sqlite3.connect(isolated_env)
    conn.execute(damage)
    conn.commit()
    conn.close()
    far = run_proc("ask", "completely unrelated volcano eruption", "--json", "--no-store")
    assert far.exit_code == 0, far.stderr
    outcome = json.loads(far.stdout)
    assert outcome["source"] == "model" and outcome["miss_reason"] == "no_match", (damage, outcome)
    assert outcome["similarity"] is None or outcome["similarity"] < 0.5, outcome
    (scale,) = scales()
    if made_again:  # by that ask, whole
        assert scale["state"] == "ready" and -1 <= scale["median"] < 0.5 and scale["estimated_from"] == 40
        assert json.loads(run_proc("ask", PARAPHRASE, "--json", "--no-store").stdout)["source"] == "semantic"


def test_nothing_is_served_below_the_raw_cosine_floor_whatever_the_scale_says() -> None:
    settings = config.load_settings({"db": "/nonexistent"})
    entry = Entry(1, "s", "k", "", "llama3.2:latest", None, {}, None, "what is a volcano", "lava", None, None, 0.0,
                  None, None, 0, None, None, None, None, "stop", {})
    req = AskRequest("how do I bake bread", Scope("", "llama3.2", None, {}, None), NOMIC, settings.threshold,
                     settings.min_confidence, None)
    assert judge("semantic", entry, 0.99, req, 1.0, cosine=0.62).verdict.serve
    assert not judge("semantic", entry, 0.99, req, 1.0, cosine=0.154).verdict.serve  # a scale gone wrong
    req.scale, req.threshold, req.min_confidence = "cosine", 0.3, 0.0  # the raw cosine, as the user chose it
    assert judge("semantic", entry, 0.4, req, 1.0, cosine=0.4).verdict.serve
