"""`semcache ask` end to end, in-process: every layer, miss reason and exit code,
against a real SQLite file and the test server over loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cache_at, calibrated, logged, restore, run_cli, run_proc, stored
from fake_ollama import FakeOllama

Q = "How do I reset my password?"
ANSWER = "This is the answer to: How do I reset my password?"
PARAPHRASE = "how do I reset my password please"  # shares 6 of 7 words: cosine 0.93 here


def ask_json(*args: str, input: str | None = None) -> dict:
    result = run_cli("ask", "--json", *args, input=input)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


entries, requests = stored, logged


@pytest.fixture(autouse=True)
def scale(isolated_env: Path) -> None:
    """The semantic layer on, as in a cache that holds enough questions for its scale."""
    calibrated(isolated_env)


def test_miss_streams_the_answer_stores_it_and_logs_it(ollama: FakeOllama, isolated_env: Path) -> None:
    result = run_cli("ask", Q)
    assert result.exit_code == 0
    assert result.stdout == ANSWER + "\n"
    assert result.stderr.startswith("semcache: miss (no_match) · answered by llama3.2:latest · stored as entry 1")
    assert ollama.counts["/api/chat"] == 1 and ollama.counts["/api/embed"] == 1
    (row,) = entries(isolated_env)
    assert (row.query, row.response, row.model, row.done_reason) == (Q, ANSWER, "llama3.2:latest", "stop")
    assert (row.prompt_tokens, row.completion_tokens, row.generation_s) == (6, 11, pytest.approx(4.935886791))
    assert row.embed_model == "nomic-embed-text:latest" and row.dims == 768
    assert row.expires_at == pytest.approx(row.created_at + 7 * 86400)
    sent = [body for path, body in ollama.requests if path == "/api/embed"][0]
    assert sent["input"] == [f"search_query: {Q}"] and sent["truncate"] is False
    (log,) = requests(isolated_env)
    assert (log.path, log.miss_reason, log.entry_id) == ("model", "no_match", 1)


def test_exact_hit_needs_no_embedding_and_no_model(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", Q)
    ollama.reset()
    result = run_cli("ask", "  how do i RESET my   password ")
    assert result.exit_code == 0 and result.stdout == ANSWER + "\n"
    assert result.stderr.startswith("semcache: exact hit · entry 1 · similarity 1.000")
    assert sum(ollama.counts.values()) == 0
    assert entries(isolated_env)[0].hits == 1
    assert requests(isolated_env)[-1].path == "exact"


def test_semantic_hit_reuses_a_paraphrase(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", Q)
    out = ask_json(PARAPHRASE)
    assert (out["source"], out["entry_id"], out["response"]) == ("semantic", 1, ANSWER)
    assert 0.85 <= out["similarity"] < 1.0 and out["confidence"] >= 0.7
    assert ollama.counts["/api/chat"] == 1
    log = requests(isolated_env)[-1]
    assert (log.path, log.entry_id, log.saved_s, log.saved_tokens) == ("semantic", 1, pytest.approx(4.935886791), 17)


def test_a_different_question_is_a_miss(ollama: FakeOllama) -> None:
    run_cli("ask", Q)
    out = ask_json("What is the capital of France?")
    assert (out["source"], out["miss_reason"], out["entry_id"]) == ("model", "no_match", 2)
    assert out["similarity"] < 0.85  # the best candidate, reported for the miss
    assert ollama.counts["/api/chat"] == 2


def test_json_object_has_the_documented_fields(ollama: FakeOllama) -> None:
    out = ask_json(Q)
    assert set(out) >= {"response", "source", "similarity", "confidence", "miss_reason", "entry_id", "model",
                        "embed_model", "namespace", "created_at", "expires_at", "timings_ms"}
    assert out["created_at"].endswith("Z") and out["expires_at"] > out["created_at"]
    assert {"exact", "embed", "semantic", "generate", "store", "total"} <= set(out["timings_ms"])
    hit = ask_json(Q)
    assert hit["source"] == "exact" and set(hit["timings_ms"]) == {"exact", "total"}


def test_prompt_from_stdin(ollama: FakeOllama) -> None:
    assert ask_json("-", input=Q + "\n")["response"] == ANSWER
    assert ask_json(input=Q)["source"] == "exact"  # absent argument + piped stdin


def test_bad_input_is_a_usage_error_and_calls_nothing(ollama: FakeOllama, isolated_env: Path) -> None:
    for args, stdin, message in [
        (("",), None, "the question is empty"),
        (("   \n\t",), None, "the question is empty"),
        (("-",), b"\xff\xfe bad", "not valid UTF-8"),
        (("a\x00b",), None, "NUL byte"),
        (("x", "--threshold", "1.5"), None, "--threshold: 1.5 is not a number between 0 and 1"),
        (("x", "--ttl", "soon"), None, "is not a duration"),
        (("x", "-o", "warp", "9"), None, "unknown option 'warp'"),
        (("x", "--cache-only", "--no-cache"), None, "contradict"),
    ]:
        result = run_cli("ask", *args, input=stdin)
        assert result.exit_code == 2, (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and message in result.stderr
        assert result.stdout == ""
    assert sum(ollama.counts.values()) == 0
    assert not isolated_env.exists() or entries(isolated_env) == []


def test_overlong_question_is_refused(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMCACHE_MAX_QUERY_CHARS", "50")
    result = run_cli("ask", "x" * 51)
    assert result.exit_code == 2 and "over the limit of 50" in result.stderr


def age_entry(db: Path, seconds: float) -> None:
    """Make the stored entry look `seconds` older, as the clock would."""
    (entry,) = stored(db)
    restore(db, entry, created_at=entry.created_at - seconds)


def test_expired_entry_is_a_miss_and_gets_replaced(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", Q, "--ttl", "1h")
    age_entry(isolated_env, 3601)
    ollama.replies[Q] = "A fresher answer."
    out = ask_json(Q)
    assert (out["source"], out["miss_reason"], out["response"], out["entry_id"]) == ("model", "expired", "A fresher answer.", 1)
    assert [r.response for r in entries(isolated_env)] == ["A fresher answer."]  # upserted, not duplicated


def test_entry_without_ttl_never_expires(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", Q, "--ttl", "never")
    age_entry(isolated_env, 10 * 365 * 86400)
    assert entries(isolated_env)[0].expires_at is None
    assert ask_json(Q)["source"] == "exact"


def test_poisoned_entry_is_never_served(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", Q)
    restore(isolated_env, stored(isolated_env)[0], response="", done_reason="length")
    out = ask_json(Q)
    assert (out["source"], out["miss_reason"], out["response"]) == ("model", "poisoned", ANSWER)


def test_old_semantic_match_has_low_confidence(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", Q, "--ttl", "10d")
    age_entry(isolated_env, 9 * 86400)  # freshness 0.1: 0.7*0.93 + 0.03 < 0.7
    out = ask_json(PARAPHRASE)
    assert (out["source"], out["miss_reason"]) == ("model", "low_confidence")
    assert out["confidence"] < 0.7 and out["similarity"] >= 0.85
    # the exact question itself is still trusted: similarity 1 outweighs the age
    assert ask_json(Q)["source"] == "exact"


def test_no_cache_bypasses_the_lookup_but_stores(ollama: FakeOllama, isolated_env: Path) -> None:
    run_cli("ask", Q)
    ollama.replies[Q] = "Regenerated."
    out = ask_json(Q, "--no-cache")
    assert (out["source"], out["miss_reason"], out["response"]) == ("model", "bypass", "Regenerated.")
    assert [r.response for r in entries(isolated_env)] == ["Regenerated."]
    assert requests(isolated_env)[-1].miss_reason == "bypass"


def test_no_store_answers_without_storing(ollama: FakeOllama, isolated_env: Path) -> None:
    out = ask_json(Q, "--no-store")
    assert (out["response"], out["stored"], out["entry_id"]) == (ANSWER, False, None)
    assert entries(isolated_env) == [] and requests(isolated_env)[-1].path == "model"


def test_cache_only_serves_hits_and_exits_3_on_a_miss(ollama: FakeOllama, isolated_env: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_cli("ask", Q)
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # Ollama is gone now
    assert run_cli("ask", Q, "--cache-only").stdout == ANSWER + "\n"
    miss = run_cli("ask", "Something never asked", "--cache-only")
    assert miss.exit_code == 3 and miss.stdout == ""
    # Ollama is gone, so the question could not be embedded: the semantic layer never looked
    assert "no cached answer (embed_failed) and --cache-only is set" in miss.stderr
    assert requests(isolated_env)[-1].path == "miss"


def test_exit_4_when_ollama_is_unreachable(isolated_env: Path) -> None:
    result = run_cli("ask", Q)
    assert result.exit_code == 4
    assert result.stderr == ("semcache: error: cannot reach Ollama at http://127.0.0.1:9: is `ollama serve` running "
                             "there? (set OLLAMA_HOST if it runs elsewhere)\n")
    assert entries(isolated_env) == []
    (log,) = requests(isolated_env)
    assert log.path == "error" and "cannot reach Ollama" in log.error


def test_exit_5_when_the_model_is_missing(ollama: FakeOllama, isolated_env: Path) -> None:
    result = run_cli("ask", Q, "-m", "llama9")
    assert result.exit_code == 5 and "run `ollama pull llama9`" in result.stderr
    assert entries(isolated_env) == []
    assert requests(isolated_env)[-1].path == "error"


def test_exit_1_on_a_server_error(ollama: FakeOllama, isolated_env: Path) -> None:
    ollama.faults.chat_status = (500, "timed out waiting for llama-server to start")
    result = run_cli("ask", Q)
    assert result.exit_code == 1 and "llama-server" in result.stderr and result.stdout == ""
    assert entries(isolated_env) == []


@pytest.mark.parametrize(
    ("fault", "value", "message"),
    [
        ("error_after", 3, "failed mid-answer"),
        ("drop_after", 3, "dropped mid-answer"),
        ("malformed_after", 3, "malformed JSON"),
        ("done_reason", "length", "cut off at the length limit"),
    ],
)
def test_a_broken_generation_prints_what_came_then_fails_and_stores_nothing(
    ollama: FakeOllama, isolated_env: Path, fault: str, value: object, message: str
) -> None:
    setattr(ollama.faults, fault, value)
    result = run_cli("ask", Q)
    assert result.exit_code == 1
    assert ANSWER.startswith(result.stdout) and result.stdout  # the partial text stays visible
    assert message in result.stderr and "nothing was stored" in result.stderr
    assert entries(isolated_env) == []
    assert requests(isolated_env)[-1].path == "error"
    ollama.reset()
    assert run_cli("ask", Q).stderr.startswith("semcache: miss (no_match)")  # nothing half-stored to hit


def test_an_empty_answer_is_not_stored(ollama: FakeOllama, isolated_env: Path) -> None:
    ollama.replies[Q] = ""
    result = run_cli("ask", Q)
    assert result.exit_code == 1 and "empty answer" in result.stderr
    assert entries(isolated_env) == []


@pytest.mark.parametrize(
    "other",
    [("-m", "qwen2.5"), ("-s", "Answer in French."), ("-o", "temperature", "0"), ("-n", "team-b"), ("--format", "json")],
)
def test_answers_never_cross_scopes(ollama: FakeOllama, other: tuple[str, ...]) -> None:
    run_cli("ask", Q)
    out = ask_json(Q, *other)
    assert (out["source"], out["miss_reason"]) == ("model", "no_match")
    assert ask_json(PARAPHRASE, *other)["source"] == "semantic"  # hits its own scope's entry
    assert ollama.counts["/api/chat"] == 2


def test_scope_options_reach_ollama(ollama: FakeOllama) -> None:
    ask_json(Q, "-s", "Be terse.", "-o", "temperature", "0", "-o", "seed", "42", "--format", "json")
    body = [b for p, b in ollama.requests if p == "/api/chat"][0]
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert body["options"] == {"temperature": 0.0, "seed": 42} and body["format"] == "json"
    assert body["stream"] is True


def test_runtime_options_reach_ollama_typed(ollama: FakeOllama) -> None:
    result = run_proc("ask", Q, "-o", "num_thread", "4", "-o", "num_gpu", "0", "-o", "use_mmap", "false",
                      "-o", "num_batch=256", "-o", "main_gpu", "1")
    assert result.exit_code == 0, result.stderr
    body = [b for p, b in ollama.requests if p == "/api/chat"][0]
    assert body["options"] == {"num_thread": 4, "num_gpu": 0, "use_mmap": False, "num_batch": 256, "main_gpu": 1}


def test_runtime_options_do_not_split_the_cache(ollama: FakeOllama, isolated_env: Path) -> None:
    first = ask_json(Q, "-o", "temperature", "0", "-o", "num_thread", "8", "-o", "num_gpu", "99")
    assert first["source"] == "model"
    again = ask_json(Q, "-o", "temperature", "0", "-o", "num_thread", "2", "-o", "use_mmap", "false")
    assert (again["source"], again["entry_id"]) == ("exact", first["entry_id"])  # another machine's knobs
    assert ask_json(Q, "-o", "temperature", "0")["source"] == "exact"
    assert ask_json(Q, "-o", "temperature", "1", "-o", "num_thread", "8")["source"] == "model"  # a scope option
    bodies = [b for p, b in ollama.requests if p == "/api/chat"]
    assert [b["options"] for b in bodies] == [{"temperature": 0.0, "num_thread": 8, "num_gpu": 99},
                                              {"temperature": 1.0, "num_thread": 8}]  # still sent
    assert [e.options for e in stored(isolated_env)] == [{"temperature": 0.0}, {"temperature": 1.0}]


def test_vectors_of_another_embedding_model_are_never_compared(ollama: FakeOllama, isolated_env: Path) -> None:
    calibrated(isolated_env, "all-minilm", 384)  # both models' semantic layers on
    run_cli("ask", Q)  # stored with nomic-embed-text
    out = ask_json(PARAPHRASE, "--embed-model", "all-minilm")
    assert (out["source"], out["miss_reason"]) == ("model", "no_match")
    assert ask_json(Q, "--embed-model", "all-minilm")["source"] == "exact"  # the exact layer needs no vectors


def test_missing_embedding_model_degrades_with_one_warning(ollama: FakeOllama, isolated_env: Path) -> None:
    result = run_cli("ask", Q, "--embed-model", "mxbai-embed-large")
    assert result.exit_code == 0 and result.stdout == ANSWER + "\n"
    warning, status = result.stderr.splitlines()
    assert warning == ("semcache: warning: embedding model 'mxbai-embed-large' not found: "
                       "run `ollama pull mxbai-embed-large`; semantic layer skipped")
    assert status.startswith("semcache: miss (embed_failed)")  # not "nothing near enough": it never looked
    (row,) = entries(isolated_env)
    with cache_at(isolated_env) as store:
        assert row.embed_model is None and store.vector_of(row.id) is None
    assert run_cli("ask", Q, "--embed-model", "mxbai-embed-large").stderr.startswith("semcache: exact hit")


def test_old_server_without_api_embed_still_gets_semantic_hits(ollama: FakeOllama) -> None:
    ollama.faults.legacy = True
    run_cli("ask", Q)
    assert ask_json(PARAPHRASE)["source"] == "semantic"


def test_quiet_silences_status_but_not_errors(ollama: FakeOllama) -> None:
    assert run_cli("ask", "-q", Q).stderr == ""
    assert run_cli("ask", "-q", Q, "-m", "llama9").stderr.startswith("semcache: error:")


def test_version_and_help_show_defaults_and_exit_codes() -> None:
    assert run_cli("--version").stdout.startswith("semcache 0.")
    text = run_cli("ask", "--help").stdout
    for needle in ("llama3.2", "nomic-embed-text", "default: 0.84", "default: 0.7", "default: 7d",
                   "3 miss under", "5 model not found"):
        assert needle in " ".join(text.split()), needle
