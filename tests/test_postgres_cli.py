"""Every command, unchanged, on the shared store: `--db postgresql://...` against a real
PostgreSQL + pgvector server and the test Ollama server, in-process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import cache_at, calibrated, logged, restore, run_cli, stored
from fake_ollama import FakeOllama

Q = "How do I reset my password?"
ANSWER = "This is the answer to: How do I reset my password?"
PARAPHRASE = "how do I reset my password please"
DAY = 86400.0


@pytest.fixture
def pg(postgres_db: str, ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SEMCACHE_DB", postgres_db)
    calibrated(postgres_db)  # both models' semantic layers on, as in a store with enough questions
    calibrated(postgres_db, "all-minilm", 384)
    return postgres_db


def ask_json(*args: str) -> dict:
    result = run_cli("ask", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_ask_miss_exact_semantic_and_cache_only(pg: str, ollama: FakeOllama) -> None:
    miss = ask_json(Q)
    assert (miss["source"], miss["stored"], miss["response"]) == ("model", True, ANSWER)
    exact = run_cli("ask", "  how do i RESET my   password ")
    assert exact.stdout == ANSWER + "\n" and exact.stderr.startswith(f"semcache: exact hit · entry {miss['entry_id']}")
    semantic = ask_json(PARAPHRASE)
    assert (semantic["source"], semantic["entry_id"]) == ("semantic", miss["entry_id"])
    assert 0.85 <= semantic["similarity"] < 1.0
    assert ollama.generations == 1
    none = run_cli("ask", "--cache-only", "Something never asked")
    assert none.exit_code == 3 and none.stdout == ""
    (entry,) = stored(pg)
    assert (entry.query, entry.hits, entry.embed_model, entry.dims) == (Q, 2, "nomic-embed-text:latest", 768)
    assert [row.path for row in logged(pg)] == ["model", "exact", "semantic", "miss"]


def test_answers_never_cross_scopes_or_embedding_models(pg: str, ollama: FakeOllama) -> None:
    ask_json(Q)
    assert ask_json(Q, "-n", "team-b")["source"] == "model"
    assert ask_json(PARAPHRASE, "--embed-model", "all-minilm")["miss_reason"] == "no_match"  # 384 dims here
    assert ask_json(PARAPHRASE, "-n", "team-b")["source"] == "semantic"
    assert ask_json(PARAPHRASE, "--embed-model", "all-minilm", "-n", "other")["source"] == "model"


def test_a_broken_generation_stores_nothing(pg: str, ollama: FakeOllama) -> None:
    ollama.faults.drop_after = 3
    result = run_cli("ask", Q)
    assert result.exit_code == 1 and "nothing was stored" in result.stderr
    assert stored(pg) == [] and logged(pg)[-1].path == "error"


def fill(pg: str) -> dict[str, int]:
    """Five entries asked for real, then aged or hit as a team's cache would be."""
    questions = {"fresh": "what is a fresh question", "old": "what is an old question",
                 "expired": "what is an expired question", "team": "what is a team question",
                 "qwen": "what is a qwen question"}
    for name, question in questions.items():
        args = ["-n", "team"] if name == "team" else ["-m", "qwen2.5"] if name == "qwen" else []
        assert run_cli("ask", "-q", question, *args).exit_code == 0
    entries = {e.query: e for e in stored(pg)}
    restore(pg, entries[questions["old"]], created_at=time.time() - 40 * DAY, ttl=None)
    restore(pg, entries[questions["expired"]], created_at=time.time() - 8 * DAY)
    return {name: entries[q].id for name, q in questions.items()}


def test_inspect_lists_shows_and_explains(pg: str) -> None:
    ids = fill(pg)
    listing = run_cli("inspect").stdout.splitlines()
    assert listing[0].startswith("id\tage\texpires") and len(listing) == 6
    assert [json.loads(line)["id"] for line in run_cli("inspect", "--jsonl", "--sort", "oldest").stdout.splitlines()] \
        == [ids["old"], ids["expired"], ids["fresh"], ids["team"], ids["qwen"]]
    assert [e["id"] for e in json.loads(run_cli("inspect", "--json", "--expired").stdout)] == [ids["expired"]]
    one = json.loads(run_cli("inspect", str(ids["team"]), "--json", "--with-vectors").stdout)
    assert (one["namespace"], one["dims"], len(one["vector"])) == ("team", 768, 768)
    assert "namespace:  team" in run_cli("inspect", str(ids["team"])).stdout
    explained = json.loads(run_cli("inspect", "--similar", "what is a fresh question please", "--json").stdout)
    assert explained["decision"]["entry_id"] == ids["fresh"] and explained["decision"]["source"] == "semantic"
    missing = run_cli("inspect", "99999")
    assert missing.exit_code == 2 and "no entry 99999 in postgresql://" in missing.stderr


@pytest.mark.parametrize(("args", "gone"), [
    (["--expired"], {"expired"}),
    (["--older-than", "30d"], {"old"}),
    (["-n", "team"], {"team"}),
    (["-m", "qwen2.5"], {"qwen"}),
    (["--grep", "FRESH"], {"fresh"}),
    (["--embed-model", "nomic-embed-text", "--older-than", "7d"], {"old", "expired"}),
])
def test_purge_by_every_selector(pg: str, args: list[str], gone: set[str]) -> None:
    ids = fill(pg)
    report = json.loads(run_cli("purge", *args, "--json").stdout)
    assert report["deleted"] == len(gone) and report["remaining"] == 5 - len(gone)
    assert {e.id for e in stored(pg)} == {ids[n] for n in ids.keys() - gone}
    with cache_at(pg) as store:
        assert all(store.vector_of(ids[n]) is None for n in gone)  # vectors went with their entries


def test_purge_ids_all_and_dry_run(pg: str) -> None:
    ids = fill(pg)
    dry = run_cli("purge", "--all", "--dry-run")
    assert dry.stderr == "semcache: would purge 5 entries; 0 left\n" and len(stored(pg)) == 5
    assert run_cli("purge", "--all").exit_code == 2  # no terminal, no --yes
    assert run_cli("purge", "--id", str(ids["team"]), "--id", str(ids["qwen"])).exit_code == 0
    assert len(stored(pg)) == 3
    assert run_cli("purge", "--all", "--yes", "--vacuum").exit_code == 0 and stored(pg) == []


def test_purge_bounds_entries_size_and_log(pg: str) -> None:
    ids = fill(pg)
    with cache_at(pg) as store:
        store.record_hit(ids["old"], time.time(), logged(pg)[0]._replace(path="exact"))  # just used
        before = store.used_bytes()
    report = json.loads(run_cli("purge", "--max-entries", "3", "--json").stdout)
    assert report["evicted"] == 2 and ids["old"] in {e.id for e in stored(pg)}
    bound = before // 2
    sized = json.loads(run_cli("purge", "--max-size", f"{bound}B", "--json").stdout)
    assert sized["bytes_in_use"] <= bound and sized["remaining"] >= 1 and ids["old"] in {e.id for e in stored(pg)}
    with cache_at(pg) as store:
        store.log_request(logged(pg)[0]._replace(at=time.time() - 100 * DAY))
    rows = len(logged(pg))
    trimmed = json.loads(run_cli("purge", "--log-older-than", "90d", "--json").stdout)
    assert trimmed["log_rows_deleted"] == 1 and len(logged(pg)) == rows - 1


def test_stats_on_the_shared_store(pg: str, postgres_db: str) -> None:
    fill(pg)
    run_cli("ask", "-q", "what is a fresh question")
    figures = json.loads(run_cli("stats", "--json").stdout)
    assert figures["database"] == postgres_db  # no password in it to mask
    assert figures["entries"]["total"] == 5 and figures["entries"]["expired"] == 1
    assert figures["entries"]["by_namespace"] == {"default": 4, "team": 1}
    assert figures["requests"]["hits"]["exact"] == 1 and figures["requests"]["asks"] == 6
    assert figures["size_bytes"] > 0 and figures["top_entries"][0]["hits"] == 1
    assert run_cli("stats").stdout.startswith(f"database     {postgres_db} (")


def test_replay_live_dry_run_simulate_and_from_log(pg: str, ollama: FakeOllama, tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"query": f"replayed question number {n}", "label": f"l{n % 3}"}) + "\n"
                               for n in range(12)))
    live = json.loads(run_cli("replay", str(queries), "-j", "2", "--json").stdout)["reports"][0]
    assert (live["queries"], live["model_calls"], live["errors"]) == (12, 12, 0)
    assert len(stored(pg)) == 12 and stored(pg)[0].metadata["label"] in ("l0", "l1", "l2")
    generations = ollama.generations
    dry = json.loads(run_cli("replay", str(queries), "--dry-run", "--json").stdout)["reports"][0]
    assert dry["hits"]["exact"] == 12 and ollama.generations == generations
    rows = len(logged(pg))
    simulated = json.loads(run_cli("replay", str(queries), "--simulate", "--json").stdout)["reports"][0]
    assert simulated["queries"] == 12 and len(logged(pg)) == rows and ollama.generations == generations
    from_log = json.loads(run_cli("replay", "--from-log", "--dry-run", "--json").stdout)["reports"][0]
    assert from_log["queries"] == 12 and from_log["hits"]["exact"] == 12
