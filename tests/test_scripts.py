"""semcache in scripts, as real processes: long piped input, the miss reasons a script
reads, the words of its messages, its completion and its help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cache_at, calibrated, run_proc, stored
from fake_ollama import FakeOllama

from semcache_cli import config, policy
from semcache_cli.engine import run_ask
from semcache_cli.errors import UsageError
from semcache_cli.storage.models import NewEntry


def diff_text(lines: int) -> str:
    """A `git diff`-shaped text, lines long."""
    body = [f"+    value_{n} = compute({n}, scale=0.{n % 10})  # line {n}" for n in range(lines)]
    return f"diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -1,0 +1,{lines} @@\n" + "\n".join(body)


# -- long input (item 9) -----------------------------------------------------------------

def test_a_long_diff_is_answered_and_cached_exactly(ollama: FakeOllama, isolated_env: Path) -> None:
    ollama.embed_context_chars = 8_000  # the embedding model's context, as Ollama refuses past it
    diff = diff_text(2_000)
    assert len(diff) > 100_000
    first = run_proc("ask", "-", "-s", "Review this diff.", input=diff)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.startswith("This is the answer to: diff --git")
    assert first.stderr.startswith("semcache: miss (too_long_to_embed) · answered by llama3.2:latest · stored as entry 1")
    assert "warning" not in first.stderr  # long input is expected, not a fault
    [entry] = stored(isolated_env)
    assert entry.query == diff.strip() and entry.embed_model is None  # exact layer only
    again = run_proc("ask", "-", "-s", "Review this diff.", "--json", input=diff)
    assert again.exit_code == 0
    assert json.loads(again.stdout)["source"] == "exact"
    assert ollama.counts["/api/chat"] == 1


def test_a_long_question_misses_with_its_reason_in_json(ollama: FakeOllama) -> None:
    ollama.embed_context_chars = 1_000
    result = run_proc("ask", "x " * 2_000, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["miss_reason"] == "too_long_to_embed"
    short = run_proc("ask", "a short question", "--json")
    assert json.loads(short.stdout)["miss_reason"] in ("no_match", "calibrating")


def test_past_the_maximum_a_question_is_a_usage_error(ollama: FakeOllama) -> None:
    result = run_proc("ask", "-", input="y" * 4_000_001)
    assert result.exit_code == 2
    assert result.stderr == ("semcache: error: the question is 4,000,001 characters, over the limit of 4,000,000 "
                             "(max_query_chars)\n")


def test_inspect_similar_explains_a_long_question(ollama: FakeOllama) -> None:
    ollama.embed_context_chars = 1_000
    question = "why " * 600
    assert run_proc("ask", question).exit_code == 0
    result = run_proc("inspect", "--similar", question, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["decision"]["source"] == "exact"
    other = run_proc("inspect", "--similar", "how " * 600, "--json")
    assert json.loads(other.stdout)["decision"]["miss_reason"] == "too_long_to_embed"


def test_replay_embeds_around_a_long_line(ollama: FakeOllama, tmp_path: Path) -> None:
    ollama.embed_context_chars = 1_000
    queries = tmp_path / "q.txt"
    queries.write_text("How do I reset my password?\n" + "long " * 400 + "\nHow can I reset my password?\n")
    result = run_proc("replay", str(queries), "--simulate", "--json")
    assert result.exit_code == 0, result.stderr
    [report] = json.loads(result.stdout)["reports"]
    assert report["queries"] == 3 and report["errors"] == 0


# -- miss reasons (item 12) --------------------------------------------------------------

def test_a_missing_embedding_model_is_not_no_match(ollama: FakeOllama, isolated_env: Path) -> None:
    calibrated(isolated_env)
    result = run_proc("ask", "What is semantic caching?", "--embed-model", "nomic-embed-text-v9", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["miss_reason"] == "embed_failed"
    assert "embedding model 'nomic-embed-text-v9' not found" in data["warnings"][0]
    only = run_proc("ask", "Something never asked", "--embed-model", "nomic-embed-text-v9", "--cache-only")
    assert only.exit_code == 3 and "no cached answer (embed_failed)" in only.stderr


# -- words (item 12) ---------------------------------------------------------------------

def test_one_of_a_thing_is_singular(ollama: FakeOllama, isolated_env: Path) -> None:
    assert run_proc("ask", "What is semantic caching?").exit_code == 0
    calibrate = run_proc("calibrate")
    assert calibrate.stdout.startswith("nomic-embed-text:latest (768 dims): 1 vector, ")  # and its scale
    assert "1 vectors" not in calibrate.stdout
    refused = run_proc("purge", "--all")
    assert refused.exit_code == 2 and "this would delete the 1 entry;" in refused.stderr
    purged = run_proc("purge", "--all", "--yes", "--dry-run")
    assert purged.stderr.startswith("semcache: would purge 1 entry;")


def test_replay_without_a_file_says_what_is_missing(ollama: FakeOllama) -> None:
    neither = run_proc("replay")
    assert neither.exit_code == 2
    assert neither.stderr == ("semcache: error: give a FILE of queries ('-' for stdin), or --from-log to replay the "
                              "request log\n")
    both = run_proc("replay", "q.txt", "--from-log")
    assert both.exit_code == 2 and both.stderr.endswith("or --from-log, not both\n")


def complete(words: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COMP_WORDS", "COMP_CWORD")}
    env.update(_SEMCACHE_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1))
    result = subprocess.run([sys.executable, "-m", "semcache_cli"], capture_output=True, text=True, env=env,
                            cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)
    return result.stdout.split()


def test_sort_and_scale_complete_their_words_and_check_them(ollama: FakeOllama) -> None:
    assert complete("semcache inspect --sort ") == ["newest", "oldest", "hits", "last-hit"]
    assert complete("semcache ask --scale ") == ["calibrated", "cosine"]
    wrong = run_proc("inspect", "--sort", "size")
    assert wrong.exit_code == 2
    assert "'size' is not one of 'newest', 'oldest', 'hits', 'last-hit'" in wrong.stderr


def test_inspect_lists_every_namespace_as_its_help_says(ollama: FakeOllama) -> None:
    assert run_proc("ask", "q one", "-n", "alpha").exit_code == 0
    assert run_proc("ask", "q two").exit_code == 0
    listing = run_proc("inspect", "--jsonl")
    assert sorted(json.loads(line)["namespace"] for line in listing.stdout.splitlines()) == ["alpha", "default"]
    assert [json.loads(line)["namespace"] for line in run_proc("inspect", "--jsonl", "-n", "alpha").stdout.split(
        "\n") if line] == ["alpha"]
    help_text = " ".join(run_proc("inspect", "--help").stdout.split())
    assert "[default: every namespace; with --similar the namespace setting" in help_text


# -- units (item 10) ---------------------------------------------------------------------

def test_a_bare_ttl_is_refused_before_anything_is_asked(ollama: FakeOllama, isolated_env: Path) -> None:
    result = run_proc("ask", "What is semantic caching?", "--ttl", "5")
    assert result.exit_code == 2
    assert result.stderr == ("semcache: error: --ttl: '5' has no unit: write 5s, 5m, 5h or 5d (units ms, s, m, h, d, "
                             "w: e.g. 90s, 10m, 2h, 7d, 1h30m)\n")
    assert ollama.generations == 0 and stored(isolated_env) == []
    assert run_proc("ask", "What is semantic caching?", "--ttl", "5d").exit_code == 0


def test_a_bare_max_size_evicts_nothing(ollama: FakeOllama, isolated_env: Path) -> None:
    for n in range(3):
        assert run_proc("ask", f"question number {n}").exit_code == 0
    result = run_proc("purge", "--max-size", "500")
    assert result.exit_code == 2
    assert result.stderr.startswith("semcache: error: --max-size: '500' has no unit: write 500MB, 500GB, or 500B for "
                                    "bytes (units B, KB, MB")
    assert len(stored(isolated_env)) == 3
    assert run_proc("purge", "--max-size", "500MB").exit_code == 0 and len(stored(isolated_env)) == 3


def test_bare_numbers_in_the_environment_and_the_config_file(ollama: FakeOllama, tmp_path: Path) -> None:
    env_ttl = run_proc("ask", "q", env={"SEMCACHE_TTL": "3600"})
    assert env_ttl.exit_code == 2 and env_ttl.stderr.startswith("semcache: error: SEMCACHE_TTL: '3600' has no unit")
    env_timeout = run_proc("ask", "q", env={"SEMCACHE_TIMEOUT": "30"})
    assert env_timeout.exit_code == 2 and "SEMCACHE_TIMEOUT: '30' has no unit" in env_timeout.stderr
    conf = tmp_path / "conf.toml"
    conf.write_text("timeout = 300\n")
    number = run_proc("ask", "q", env={"SEMCACHE_CONFIG": str(conf)})
    assert number.exit_code == 2
    assert number.stderr == (f'semcache: error: {conf}: timeout: 300 has no unit: write it as a string, "300s" or '
                             '"300d" (units ms, s, m, h, d, w: e.g. 90s, 10m, 2h, 7d, 1h30m)\n')
    conf.write_text('timeout = "300s"\nttl = "never"\n')
    assert run_proc("ask", "q", env={"SEMCACHE_CONFIG": str(conf)}).exit_code == 0
    for args in (["stats", "--since", "7"], ["purge", "--older-than", "30"], ["purge", "--log-older-than", "90"],
                 ["replay", "--from-log", "--since", "1", "--dry-run"]):
        result = run_proc(*args)
        assert result.exit_code == 2 and "has no unit" in result.stderr, args


def test_help_shows_the_forms(ollama: FakeOllama) -> None:
    ask = " ".join(run_proc("ask", "--help").stdout.split())
    assert "How long a new answer may be reused, with its unit: 90s, 10m, 2h, 7d; or never." in ask
    purge = " ".join(run_proc("purge", "--help").stdout.split())
    assert "until under SIZE, with its unit (500MB, 2GB, 64MiB; 4096B for bytes)" in purge


# -- one spelling of a model (item 8) ----------------------------------------------------

def test_every_command_names_a_model_the_same_way(ollama: FakeOllama) -> None:
    asked = json.loads(run_proc("ask", "What is semantic caching?", "-m", "Llama3.2", "--json").stdout)
    [listed] = json.loads(run_proc("inspect", "--json").stdout)
    similar = json.loads(run_proc("inspect", "--similar", "What is semantic caching?", "--json").stdout)
    stats = json.loads(run_proc("stats", "--json").stdout)
    assert asked["model"] == listed["model"] == similar["model"] == "llama3.2:latest"
    assert list(stats["entries"]["by_model"]) == ["llama3.2:latest"]
    assert asked["embed_model"] == listed["embed_model"] == similar["embed_model"] == "nomic-embed-text:latest"
    miss = run_proc("ask", "Another question", "-m", "qwen2.5")
    assert " · answered by qwen2.5:latest · " in miss.stderr


# -- ask --json for every outcome (item 6) -----------------------------------------------

def test_json_for_an_answer_carries_the_question(ollama: FakeOllama) -> None:
    result = run_proc("ask", "What is semantic caching?", "--json")
    data = json.loads(result.stdout)
    assert (data["question"], data["exit_code"], data["error"], data["source"]) == (
        "What is semantic caching?", 0, None, "model")
    piped = json.loads(run_proc("ask", "-", "--json", input="what is semantic caching\n").stdout)
    assert (piped["question"], piped["source"]) == ("what is semantic caching\n", "exact")


def test_json_for_a_miss_under_cache_only(ollama: FakeOllama) -> None:
    result = run_proc("ask", "Never asked before", "--cache-only", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout) == {
        "question": "Never asked before", "exit_code": 3,
        "error": {"kind": "cache_miss", "message": "no cached answer (no_match) and --cache-only is set"},
        "response": None, "source": None, "hit": False, "miss_reason": "no_match"}
    assert result.stderr.endswith("semcache: error: no cached answer (no_match) and --cache-only is set\n")


def test_json_for_errors(ollama: FakeOllama, tmp_path: Path) -> None:
    cases = [  # (args, env, exit code, kind)
        (["ask", "Q1", "-m", "llama9"], {}, 5, "model_not_found"),
        (["ask", "Q2"], {"OLLAMA_HOST": "127.0.0.1:9"}, 4, "ollama_unreachable"),
        (["ask", "   "], {}, 2, "usage"),
        (["ask", "Q3", "--ttl", "5"], {}, 2, "usage"),
        (["ask", "Q4", "--db", str(tmp_path)], {}, 2, "usage"),
    ]
    for args, env, code, kind in cases:
        result = run_proc(*args, "--json", env=env)
        assert result.exit_code == code, (args, result.stderr)
        [line] = result.stdout.splitlines()
        data = json.loads(line)
        message = result.stderr.splitlines()[-1].removeprefix("semcache: error: ")
        assert (data["question"], data["exit_code"], data["error"]) == (args[1], code,
                                                                        {"kind": kind, "message": message}), args
        assert data["response"] is None and data["hit"] is False
    bad_stdin = run_proc("ask", "-", "--json", input=b"\xff\xfe not text")
    data = json.loads(bad_stdin.stdout)
    assert (bad_stdin.exit_code, data["question"], data["error"]["kind"]) == (2, None, "usage")


def test_json_for_a_question_that_is_not_utf8(ollama: FakeOllama) -> None:
    proc = subprocess.run([sys.executable, "-m", "semcache_cli", "ask", b"caf\xe9?", "--json"], capture_output=True,
                          cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    assert data["question"] == "caf\ufffd?" and data["error"]["message"] == "the question is not valid UTF-8"


def test_parallel_json_joins_back_to_its_input(ollama: FakeOllama, isolated_env: Path) -> None:
    assert run_proc("ask", "question 0").exit_code == 0
    questions = [f"question {n}" for n in range(16)]
    script = ("printf '%s\\0' \"$@\" | xargs -0 -P 8 -n 1 " + sys.executable +
              " -m semcache_cli ask -q --cache-only --json; true")
    proc = subprocess.run(["sh", "-c", script, "sh", *questions], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    by_question = {data["question"]: data for data in map(json.loads, proc.stdout.splitlines())}
    assert sorted(by_question) == sorted(questions)  # one whole object per question, every outcome
    assert by_question["question 0"]["source"] == "exact"
    assert {by_question[q]["exit_code"] for q in questions[1:]} == {3}


# -- inspect exports everything (item 7) -------------------------------------------------

def seed_many(db: Path, count: int) -> None:
    with cache_at(db) as store:
        for n in range(count):
            query = f"stored question {n}"
            store.store_answer(NewEntry(
                scope=policy.Scope("default", "llama3.2").hash, exact_key=policy.exact_key(query),
                namespace="default", model="llama3.2:latest", system=None, options={}, format=None, query=query,
                response=f"answer {n}", created_at=1_700_000_000 + n, ttl=None, done_reason="stop"))


def test_exports_hold_every_entry_and_the_table_says_when_it_stops(isolated_env: Path) -> None:
    seed_many(isolated_env, 45)
    jsonl = run_proc("inspect", "--jsonl")
    assert jsonl.exit_code == 0 and jsonl.stderr == ""
    assert [json.loads(line)["query"] for line in jsonl.stdout.splitlines()] == [
        f"stored question {n}" for n in reversed(range(45))]
    assert len(json.loads(run_proc("inspect", "--json").stdout)) == 45
    assert len(json.loads(run_proc("inspect", "--json", "--limit", "7").stdout)) == 7  # a limit given is kept
    table = run_proc("inspect")
    assert len(table.stdout.splitlines()) == 1 + 20
    assert table.stderr == ("semcache: showing 20 entries, newest first; there are more (--limit 0 lists all; "
                            "--json and --jsonl export all)\n")
    whole = run_proc("inspect", "--limit", "45")
    assert len(whole.stdout.splitlines()) == 1 + 45 and whole.stderr == ""
    assert run_proc("inspect", "-q").stderr == ""


# -- hostile input (item 19) -------------------------------------------------------------

HOSTILE_LINES = [
    '{"query": "first good question"}',
    '{"query": "bad namespace", "namespace": "\\ud800"}',
    '{"query": "bad system", "system": "be brief\\u0000then long"}',
    '{"query": "bad label", "label": "\\udfff"}',
    '{"query": "bad query \\u0000"}',
    '{"query": "deep", "label": ' + "[" * 50_000 + "]" * 50_000 + "}",
    '{"query": "second good question"}',
]


def hostile_file(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(HOSTILE_LINES) + "\n")
    return path


def test_hostile_jsonl_lines_are_bad_lines_not_an_abort(ollama: FakeOllama, isolated_env: Path,
                                                       tmp_path: Path) -> None:
    path = hostile_file(tmp_path)
    result = run_proc("replay", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert warnings == [
        f"semcache: warning: {path}: line 2: \"namespace\": not valid UTF-8; skipped",
        f"semcache: warning: {path}: line 3: \"system\": contains a NUL byte; skipped",
        f"semcache: warning: {path}: line 4: \"label\": not valid UTF-8; skipped",
        f"semcache: warning: {path}: line 5: \"query\": contains a NUL byte; skipped",
        f"semcache: warning: {path}: line 6: not valid JSON (nested too deeply); skipped",
    ]
    [report] = json.loads(result.stdout)["reports"]
    assert (report["queries"], report["bad_lines"], report["errors"]) == (2, 5, 0)
    assert sorted(entry.query for entry in stored(isolated_env)) == ["first good question", "second good question"]
    assert ollama.generations == 2


def test_strict_refuses_hostile_jsonl_before_anything_is_stored(ollama: FakeOllama, isolated_env: Path,
                                                               tmp_path: Path) -> None:
    result = run_proc("replay", str(hostile_file(tmp_path)), "--strict")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (f"semcache: error: 5 bad lines in {tmp_path / 'hostile.jsonl'} and "
                                              "--strict is set; nothing was replayed")
    assert stored(isolated_env) == [] and ollama.generations == 0


def test_a_nul_in_system_never_reaches_postgresql(ollama: FakeOllama, postgres_db: str, tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "a question", "system": "a\\u0000b"}\n{"query": "another question"}\n')
    result = run_proc("replay", str(path), "--db", postgres_db, "--json")
    assert result.exit_code == 0, result.stderr
    assert "line 1: \"system\": contains a NUL byte; skipped" in result.stderr
    assert "cannot reach the cache store" not in result.stderr
    assert [entry.query for entry in stored(postgres_db)] == ["another question"]
    assert ollama.generations == 1  # the model was never asked the refused line


def test_a_deep_or_bad_format_is_a_usage_error(ollama: FakeOllama) -> None:
    for schema, message in [
        ("[" * 30_000 + "]" * 30_000, "--format: the schema is nested more than 64 levels deep"),
        ('{"a": ' * 65 + "1" + "}" * 65, "--format: the schema is nested more than 64 levels deep"),
        ('{"type": "object", "description": "\\ud800"}', "--format: not valid UTF-8"),
        ('{"type": "object", "description": "a\\u0000b"}', "--format: contains a NUL byte"),
    ]:
        result = run_proc("ask", "q", "--format", schema)
        assert (result.exit_code, result.stderr) == (2, f"semcache: error: {message}\n"), schema[:40]
    nested = '{"a": ' * 63 + "1" + "}" * 63  # 64 levels: allowed
    assert run_proc("ask", "q", "--format", nested).exit_code == 0
    assert ollama.generations == 1


def test_every_other_input_path_refuses_the_same_classes(ollama: FakeOllama, isolated_env: Path,
                                                        tmp_path: Path) -> None:
    assert run_proc("ask", "seed").exit_code == 0
    bad = os.fsdecode(b"\xff")  # a byte that is not UTF-8, as argv hands it over
    for args, message in [
        (["inspect", "--grep", bad], "the grep to select: not valid UTF-8"),
        (["purge", "--grep", bad, "--dry-run"], "the grep to select: not valid UTF-8"),
        (["purge", "-n", bad, "--dry-run"], "the namespace to select: not valid UTF-8"),
        (["purge", "-m", bad, "--dry-run"], "the model to select: not valid UTF-8"),
        (["purge", "--embed-model", bad, "--dry-run"], "the embed model to select: not valid UTF-8"),
        (["ask", "q", "-o", "stop", bad], "-o: stop: not valid UTF-8"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "semcache_cli", *map(os.fsencode, args)], capture_output=True,
                              cwd=REPO, stdin=subprocess.DEVNULL, timeout=60)
        assert (proc.returncode, proc.stderr.decode()) == (2, f"semcache: error: {message}\n"), args
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5_000 + "1" + "]" * 5_000 + "\n")
    result = run_proc("stats", env={"SEMCACHE_CONFIG": str(deep)})
    assert (result.exit_code, result.stderr) == (2, f"semcache: error: config file {deep}: nested too deeply\n")
    numbers = tmp_path / "stop.toml"
    numbers.write_text("[options]\nstop = [1, 2]\n")
    result = run_proc("ask", "q", env={"SEMCACHE_CONFIG": str(numbers)})
    assert (result.exit_code, result.stderr) == (2, f"semcache: error: {numbers}: options: stop takes strings, "
                                                    "got [1, 2]\n")
    assert ollama.generations == 1


def test_the_engine_refuses_unstorable_text_before_calling_the_model(ollama: FakeOllama, isolated_env: Path) -> None:
    settings = config.load_settings({})
    for field, value, message in [("system", "a\x00b", "the system prompt: contains a NUL byte"),
                                  ("namespace", "\ud800", "the namespace: not valid UTF-8")]:
        # a caller that did not check its own input (the library, not the CLI)
        with pytest.raises(UsageError) as caught:
            run_ask(config.Settings(**{**settings.__dict__, field: value}), "a question")
        assert str(caught.value) == message
    assert ollama.generations == 0 and stored(isolated_env) == []


# -- replay --simulate streams (item 20) -------------------------------------------------

def test_simulate_streams_past_a_first_block_without_vectors(ollama: FakeOllama, tmp_path: Path) -> None:
    import numpy as np

    unusable = [f"unembeddable question {n}" for n in range(300)]  # more than one embedding batch
    for text in unusable:
        ollama.table[text] = np.zeros(384, dtype=np.float32)
    usable = [f"how do I reset my password number {n % 40}" for n in range(120)]
    path = tmp_path / "q.txt"
    path.write_text("\n".join(unusable + unusable[:5] + usable) + "\n")
    out = tmp_path / "rows.jsonl"
    result = run_proc("replay", str(path), "--simulate", "--embed-model", "all-minilm", "--thresholds", "0.8,0.9",
                      "--shuffle", "3", "--json", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    reports = json.loads(result.stdout)["reports"]
    assert [r["queries"] for r in reports] == [425, 425]
    for report in reports:  # the repeats are exact hits whatever the vectors; 40 distinct usable questions
        assert report["hits"]["exact"] == 5 + 80 and report["hits"]["total"] >= 85
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 850 and {r["threshold"] for r in rows} == {0.8, 0.9}
