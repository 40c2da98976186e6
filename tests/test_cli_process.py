"""semcache as a real process: pipes, exit codes, stdin handling, no tracebacks."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import REPO, calibrated, run_proc, stored
from fake_ollama import FakeOllama

Q = "What is semantic caching?"
ANSWER = "This is the answer to: What is semantic caching?"


def test_piped_stdout_carries_only_the_answer(ollama: FakeOllama) -> None:
    miss = run_proc("ask", Q)
    assert (miss.exit_code, miss.stdout) == (0, ANSWER + "\n")
    # A new cache: the model's scale made from the reference questions, said once, then the miss.
    said, status = miss.stderr.splitlines()
    assert said.startswith("semcache: calibrated nomic-embed-text:latest from 320 reference questions")
    assert status.startswith("semcache: miss (no_match)")
    hit = run_proc("ask", "what is   semantic caching")
    assert (hit.exit_code, hit.stdout) == (0, ANSWER + "\n")
    assert hit.stderr.startswith("semcache: exact hit")
    assert "\x1b[" not in miss.stderr + hit.stderr  # no colour codes when piped


def test_stdin_pipe_and_json(ollama: FakeOllama) -> None:
    run_proc("ask", Q)
    result = run_proc("ask", "-", "--json", input=Q + "\n")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["source"] == "exact"
    assert len(result.stdout.splitlines()) == 1


def test_no_question_and_no_piped_stdin_exits_2_without_waiting(ollama: FakeOllama) -> None:
    result = run_proc("ask", timeout=20)  # stdin is /dev/null: never read, never hangs
    assert result.exit_code == 2
    assert result.stderr == 'semcache: error: no question given: semcache ask "your question" (or pipe one in with -)\n'


def test_exit_codes_as_a_process(ollama: FakeOllama) -> None:
    assert run_proc("ask", "").exit_code == 2
    assert run_proc("ask", "new one", "--cache-only").exit_code == 3
    assert run_proc("ask", Q, env={"OLLAMA_HOST": "127.0.0.1:9"}).exit_code == 4
    assert run_proc("ask", Q, "-m", "llama9").exit_code == 5
    assert run_proc("ask", "--no-such-flag", "x").exit_code == 2


def test_errors_are_one_line_never_a_traceback(ollama: FakeOllama, tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("just text\n" * 50)
    result = run_proc("ask", Q, "--db", str(not_a_db))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert "not a usable SQLite database" in result.stderr
    assert not_a_db.read_text() == "just text\n" * 50


def test_newer_database_is_refused_as_a_process(ollama: FakeOllama, tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    result = run_proc("ask", Q, "--db", str(path))
    assert result.exit_code == 1 and "newer semcache" in result.stderr


def test_default_database_is_created_private_in_the_cache_dir(ollama: FakeOllama, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("SEMCACHE_DB")
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    proc = subprocess.run([sys.executable, "-m", "semcache_cli", "ask", Q], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, cwd=REPO, timeout=60)
    assert proc.returncode == 0
    db = tmp_path / "xdg" / "semcache" / "cache.db"
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert oct(db.parent.stat().st_mode & 0o777) == "0o700"


def test_a_reader_that_goes_away_does_not_lose_the_answer(ollama: FakeOllama, isolated_env: Path) -> None:
    ollama.replies[Q] = "word " * 5000
    with subprocess.Popen([sys.executable, "-m", "semcache_cli", "ask", Q], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(10)
        proc.stdout.close()  # like `| head -c 10`
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, stderr
    assert [entry.response for entry in stored(isolated_env)] == ["word " * 5000]


def _imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_a_small_cache_asks_stores_and_matches_without_numpy(ollama: FakeOllama, isolated_env: Path) -> None:
    # Importing numpy would cost each fresh ask ~90 ms; a small cache is searched and
    # scored on its calibrated scale without it.
    calibrated(isolated_env)
    trace = {"PYTHONPROFILEIMPORTTIME": "1"}
    miss = run_proc("ask", Q, env=trace)
    hit = run_proc("ask", "--json", "What is semantic caching exactly?", env=trace)
    assert (miss.exit_code, hit.exit_code) == (0, 0)
    assert json.loads(hit.stdout)["source"] == "semantic"
    for result in (miss, hit):
        assert "semcache_cli.vectors" in _imported(result.stderr)
        assert "numpy" not in _imported(result.stderr)
