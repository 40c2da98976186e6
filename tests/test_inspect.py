"""`semcache inspect`: listings (piped, terminal, JSON, JSONL), one entry whole, and
--similar explaining what ask would do, against a real file and the test server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cache_at, logged, neutral_scale, run_cli, run_in_terminal, run_proc, stored
from fake_ollama import FakeOllama

from semcache_cli import vectors
from semcache_cli.storage.models import LogRow, NewEntry

DAY = 86400.0
MINILM = "all-minilm:latest"


def at_angle(cosine: float, dims: int = 384) -> np.ndarray:
    """A unit vector whose cosine with the first axis is `cosine`."""
    vector = np.zeros(dims)
    vector[0], vector[1] = cosine, np.sqrt(1 - cosine**2)
    return vector


def new_entry(query: str, *, namespace: str = "default", model: str = "llama3.2:latest", age: float = 0.0,
              ttl: float | None = 7 * DAY, response: str | None = None, vector: np.ndarray | None = None,
              scope: str | None = None) -> NewEntry:
    """An entry in the scope `ask` would use for (namespace, model) with default settings."""
    from semcache_cli import policy

    return NewEntry(
        scope=scope or policy.Scope(namespace, model).hash, exact_key=policy.exact_key(query),
        namespace=namespace, model=policy.canonical_model(model), system=None, options={}, format=None,
        query=query, response=response or f"answer to {query}", created_at=time.time() - age, ttl=ttl,
        prompt_tokens=10, completion_tokens=90, generation_s=2.5, done_reason="stop",
        embed_model=MINILM if vector is not None else None,
        vector=vectors.unit_vector(vector) if vector is not None else None,
    )


def seed(db: Path, query: str, *, hits: int = 0, **fields: Any) -> int:
    """new_entry(query, **fields) stored, then hit `hits` times."""
    with cache_at(db) as store:
        entry_id = store.store_answer(new_entry(query, **fields))
        for _ in range(hits):
            store.record_hit(entry_id, time.time() - 60, LogRow(at=time.time() - 60, path="exact"))
        return entry_id


@pytest.fixture
def cache(isolated_env: Path) -> Path:
    seed(isolated_env, "oldest question", age=3 * DAY, ttl=None, hits=1)
    seed(isolated_env, "expired question", age=9 * DAY, hits=5)
    seed(isolated_env, "team question", namespace="team", age=2 * DAY)
    seed(isolated_env, "qwen question", model="qwen2.5", age=1 * DAY, hits=2)
    seed(isolated_env, "Password RESET [bold]help[/bold]", response="Click 'Forgot password'\nthen\tcheck mail", age=60)
    return isolated_env


def listed(result_stdout: str) -> list[list[str]]:
    lines = result_stdout.splitlines()
    assert lines[0].split("\t") == ["id", "age", "expires", "hits", "namespace", "model", "query", "response"]
    return [line.split("\t") for line in lines[1:]]


def test_list_piped_is_tab_separated_newest_first(cache: Path) -> None:
    result = run_cli("inspect")
    assert result.exit_code == 0 and result.stderr == ""
    rows = listed(result.stdout)
    assert [r[6] for r in rows] == ["Password RESET [bold]help[/bold]", "qwen question", "team question",
                                    "oldest question", "expired question"]
    newest = rows[0]
    assert newest[:6] == ["5", "1m", "in 7d", "0", "default", "llama3.2:latest"]
    assert newest[7] == "Click 'Forgot password'\\nthen\\tcheck mail"  # one line, no tab: escaped, not flattened
    assert rows[3][2] == "never" and rows[4][2] == "expired"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--namespace", "team"], ["team question"]),
        (["--model", "qwen2.5"], ["qwen question"]),
        (["--expired"], ["expired question"]),
        (["--live", "--namespace", "default", "--model", "llama3.2"],
         ["Password RESET [bold]help[/bold]", "oldest question"]),
        (["--grep", "forgot PASSWORD"], ["Password RESET [bold]help[/bold]"]),
        (["--sort", "oldest", "--limit", "2"], ["expired question", "oldest question"]),
        (["--sort", "hits", "--limit", "3"], ["expired question", "qwen question", "oldest question"]),
        (["--sort", "last-hit", "--limit", "1"], ["qwen question"]),
    ],
)
def test_list_filters_and_sorts(cache: Path, args: list[str], expected: list[str]) -> None:
    result = run_cli("inspect", *args)
    assert result.exit_code == 0, result.stderr
    assert [r[6] for r in listed(result.stdout)] == expected


def test_limit_defaults_to_20_and_0_means_all(isolated_env: Path) -> None:
    for i in range(25):
        seed(isolated_env, f"question {i}", age=100 - i)
    assert len(listed(run_cli("inspect").stdout)) == 20
    assert len(listed(run_cli("inspect", "--limit", "0").stdout)) == 25


def test_list_json_and_jsonl(cache: Path) -> None:
    array = json.loads(run_cli("inspect", "--json", "--limit", "0").stdout)
    assert [e["id"] for e in array] == [5, 4, 3, 1, 2]
    first = array[0]
    assert first["query"] == "Password RESET [bold]help[/bold]"
    assert first["response"] == "Click 'Forgot password'\nthen\tcheck mail"
    assert first["model"] == "llama3.2:latest" and first["expired"] is False and "vector" not in first
    assert first["prompt_tokens"] == 10 and first["completion_tokens"] == 90 and first["generation_s"] == 2.5
    lines = run_cli("inspect", "--jsonl", "--limit", "0").stdout.splitlines()

    def timeless(entry: dict) -> dict:  # freshness moves on between the two runs
        return {k: v for k, v in entry.items() if k not in ("freshness", "confidence_now")}

    assert [timeless(json.loads(line)) for line in lines] == [timeless(e) for e in array]


def test_with_vectors(isolated_env: Path) -> None:
    seed(isolated_env, "with a vector", vector=at_angle(0.6))
    seed(isolated_env, "without one")
    rows = json.loads(run_cli("inspect", "--json", "--with-vectors").stdout)
    by_query = {e["query"]: e for e in rows}
    assert by_query["with a vector"]["vector"][:2] == pytest.approx([0.6, 0.8], abs=1e-6)
    assert len(by_query["with a vector"]["vector"]) == 384
    assert by_query["without one"]["vector"] is None


def test_show_one_entry_whole(cache: Path) -> None:
    result = run_cli("inspect", "5")
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith("entry 5\nquery:      Password RESET [bold]help[/bold]\n")
    assert "model:      llama3.2:latest\n" in text and "system:     (none)\n" in text
    assert "embedding:  none (stored without a vector)" in text
    assert "ttl:        7d\n" in text and "(in 7d)" in text
    assert "tokens:     prompt 10, completion 90\n" in text
    assert "generation: 2.50 s (done_reason stop)" in text
    assert text.endswith("response:\nClick 'Forgot password'\nthen\tcheck mail\n")  # whole and raw
    confidence = next(line for line in text.splitlines() if line.startswith("confidence:"))
    assert confidence.startswith("confidence: 1.000 if asked now")  # fresh: 0.7 + 0.3 * ~1.0
    expired = run_cli("inspect", "2").stdout
    assert "expired 2d ago" in expired and "confidence: 0.700" in expired and "hits:       5, last" in expired
    obj = json.loads(run_cli("inspect", "2", "--json").stdout)
    assert obj["id"] == 2 and obj["expired"] is True and obj["hits"] == 5 and obj["confidence_now"] == 0.7


def test_unknown_id_and_contradictions_are_usage_errors(cache: Path) -> None:
    missing = run_cli("inspect", "99")
    assert missing.exit_code == 2 and missing.stderr == f"semcache: error: no entry 99 in {cache} (semcache inspect lists them)\n"
    assert run_cli("inspect", "--json", "--jsonl").exit_code == 2
    assert run_cli("inspect", "--expired", "--live").exit_code == 2
    assert run_cli("inspect", "1", "--similar", "x").exit_code == 2
    bad_sort = run_cli("inspect", "--sort", "size")
    assert bad_sort.exit_code == 2 and "'size' is not one of 'newest', 'oldest', 'hits', 'last-hit'" in bad_sort.stderr


def test_before_the_first_ask_the_default_cache_is_empty_and_not_created(
        isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMCACHE_DB")  # the default location, under XDG_CACHE_HOME
    result = run_cli("inspect")
    assert result.exit_code == 0 and listed(result.stdout) == []
    assert json.loads(run_cli("inspect", "--json").stdout) == []
    assert run_cli("inspect", "--similar", "anything").exit_code in (0, 4)  # no store made for it either
    assert not (tmp_path / "xdg-cache" / "semcache").exists()


def test_a_named_cache_that_is_not_there_is_not_made_up(isolated_env: Path) -> None:
    # A mistyped --db must not report on an empty cache it just created.
    for args in (["inspect"], ["inspect", "1"], ["inspect", "--json"]):
        result = run_cli(*args)
        assert result.exit_code == 2, args
        assert result.stderr == f"semcache: error: there is no cache at {isolated_env} (check the path)\n"
    assert not isolated_env.exists()


def test_cron_form_no_terminal_no_stdin(cache: Path) -> None:
    result = run_proc("inspect", "--jsonl", "--expired")
    assert result.exit_code == 0 and result.stderr == ""
    assert [json.loads(line)["query"] for line in result.stdout.splitlines()] == ["expired question"]


def test_terminal_form_is_a_table_that_keeps_markup_literal(cache: Path) -> None:
    code, text = run_in_terminal("inspect")
    lines = [line.rstrip() for line in text.splitlines()]
    assert code == 0
    assert "\t" not in text
    assert lines[0].split() == ["id", "age", "expires", "hits", "namespace", "model", "query", "response"]
    assert "Password RESET [bold]help[/bold]" in lines[1]  # Rich did not eat the brackets
    assert len(lines) == 6


# -- --similar ---------------------------------------------------------------------------

@pytest.fixture
def neighbours(ollama: FakeOllama, isolated_env: Path) -> Path:
    ollama.table["the probe"] = at_angle(1.0)
    seed(isolated_env, "close but expired", vector=at_angle(0.97), age=8 * DAY)
    seed(isolated_env, "close and live", vector=at_angle(0.93), age=DAY)
    seed(isolated_env, "a bit off", vector=at_angle(0.80))
    seed(isolated_env, "other namespace", vector=at_angle(0.99), namespace="team")
    neutral_scale(isolated_env)  # the calibrated similarity is the cosine of these vectors
    return isolated_env


def test_similar_explains_the_decision(neighbours: Path) -> None:
    result = run_cli("inspect", "--similar", "the probe", "--embed-model", "all-minilm")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["#", "layer", "id", "similarity", "cosine", "freshness", "confidence", "verdict",
                                    "query"]
    rows = [line.split("\t") for line in lines[1:-1]]
    assert [(r[2], r[3], r[4], r[7]) for r in rows] == [
        ("1", "0.970", "0.970", "expired"), ("2", "0.930", "0.930", "served"),
        ("3", "0.800", "0.800", "below threshold"),
    ]  # the other namespace's entry is never a candidate
    assert lines[-1] == "ask would serve entry 2 (semantic hit, similarity 0.930, cosine 0.930, confidence 0.908)"


def test_similar_json_agrees_with_what_ask_then_does(neighbours: Path) -> None:
    explained = json.loads(run_cli("inspect", "--similar", "the probe", "--embed-model", "all-minilm", "--json").stdout)
    assert explained["decision"] == {"hit": True, "source": "semantic", "entry_id": 2, "miss_reason": None, "miss_detail": None,
                                     "similarity": 0.93, "cosine": 0.93, "confidence": pytest.approx(0.908, abs=1e-3)}
    assert [c["verdict"] for c in explained["candidates"]] == ["expired", "served", "below threshold"]
    hits_before = sum(entry.hits for entry in stored(neighbours))
    assert logged(neighbours) == []  # inspect logs nothing
    asked = json.loads(run_cli("ask", "the probe", "--embed-model", "all-minilm", "--json").stdout)
    assert (asked["source"], asked["entry_id"]) == ("semantic", 2)
    assert sum(entry.hits for entry in stored(neighbours)) == hits_before + 1


def test_similar_miss_reasons(neighbours: Path) -> None:
    strict = run_cli("inspect", "--similar", "the probe", "--embed-model", "all-minilm", "--threshold", "0.95")
    assert strict.stdout.splitlines()[-1] == "ask would miss (expired, similarity 0.970, cosine 0.970) and call the model"
    stricter = run_cli("inspect", "--similar", "the probe", "--embed-model", "all-minilm", "--threshold", "0.98")
    assert stricter.stdout.splitlines()[-1] == (
        "ask would miss (no_match, best similarity 0.970 < threshold 0.980, cosine 0.970) and call the model")
    other = run_cli("inspect", "--similar", "the probe", "--embed-model", "all-minilm", "-n", "team", "--jsonl")
    assert [json.loads(line)["entry_id"] for line in other.stdout.splitlines()] == [4]


def test_similar_shows_the_exact_layer_first(neighbours: Path) -> None:
    result = run_cli("inspect", "--similar", "Close and LIVE?", "--embed-model", "all-minilm", "--json")
    explained = json.loads(result.stdout)
    assert explained["candidates"][0]["source"] == "exact" and explained["candidates"][0]["verdict"] == "served"
    assert explained["decision"]["source"] == "exact"


def test_similar_needs_the_embedding_model(neighbours: Path) -> None:
    result = run_cli("inspect", "--similar", "the probe", "--embed-model", "missing-model")
    assert result.exit_code == 5 and "ollama pull missing-model" in result.stderr
    assert result.stdout == ""


def test_vectors_only_when_asked_on_every_form(neighbours: Path) -> None:
    one = json.loads(run_cli("inspect", "2", "--json", "--with-vectors").stdout)
    assert one["vector"][:2] == pytest.approx([0.93, np.sqrt(1 - 0.93**2)], abs=1e-6)
    assert "vector" not in json.loads(run_cli("inspect", "2", "--json").stdout)
    similar = run_cli("inspect", "--similar", "the probe", "--embed-model", "all-minilm", "--jsonl", "--with-vectors")
    rows = [json.loads(line) for line in similar.stdout.splitlines()]
    assert [len(r["entry"]["vector"]) for r in rows] == [384, 384, 384]
    plain = run_cli("inspect", "--similar", "the probe", "--embed-model", "all-minilm", "--json").stdout
    assert all("vector" not in c["entry"] for c in json.loads(plain)["candidates"])


def test_a_reader_that_stops_early_is_not_an_error(isolated_env: Path) -> None:
    import os
    import subprocess
    import sys

    from conftest import REPO

    with cache_at(isolated_env) as store:
        for i in range(700):  # more than a pipe buffer of listing
            store.store_answer(new_entry(f"question number {i} " + "with a longer text to fill the pipe " * 3, age=i))
    proc = subprocess.Popen([sys.executable, "-m", "semcache_cli", "inspect", "--limit", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=os.environ.copy(), cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"id\t")
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read() if proc.stderr else b""
    proc.wait(timeout=60)
    proc.stderr.close() if proc.stderr else None
    assert proc.returncode == 0 and err == b""
