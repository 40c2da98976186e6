"""Single-flight with real processes, on every backend: one generation per new question
however many ask it at once, asking processes beside a purge loop, and a killed holder
taken over (on SQLite at once, its pid being gone; on PostgreSQL once its lease runs
out). No sleeps that race: every wait polls a condition with a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BACKENDS, REPO, claim_free, db_rows, logged, run_cli, stored, wait_for
from fake_ollama import FakeOllama

LONG_ANSWER = " ".join(f"word{i}" for i in range(40))


@pytest.fixture(params=BACKENDS)
def shared_db(request: pytest.FixtureRequest, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The cache every process of the test shares (SEMCACHE_DB): a file, or a schema of its
    own on the PostgreSQL test server."""
    db = request.getfixturevalue("postgres_db") if request.param == "postgres" else str(isolated_env)
    monkeypatch.setenv("SEMCACHE_DB", db)
    yield db


def on_postgres(db: str) -> bool:
    return db.startswith("postgresql://")


def asker(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "semcache_cli", "ask", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(), cwd=REPO)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def test_sixteen_processes_one_new_question_one_generation(ollama: FakeOllama, shared_db: str) -> None:
    question = "what does single flight mean here"
    ollama.replies[question] = LONG_ANSWER
    ollama.faults.chunk_delay = 0.02  # the answer takes ~1 s: the others arrive while it streams
    results = [finish(p) for p in [asker("-q", question) for _ in range(16)]]
    assert [code for code, _, _ in results] == [0] * 16, [err for _, _, err in results]
    assert {out for _, out, _ in results} == {LONG_ANSWER + "\n"}
    assert ollama.generations == 1
    paths = [row.path for row in logged(shared_db)]
    assert paths.count("model") == 1 and len(paths) == 16
    assert claim_free(shared_db, question)


WORKER = """
import random, sys
from semcache_cli import config
from semcache_cli.engine import run_ask
seed, asks, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
questions = [f"question {n}x{n}" for n in range(count)]
rng = random.Random(seed)
settings = config.load_settings({})
for i in range(asks):
    question = rng.choice(questions) if i >= count else questions[(i + 5 * seed) % count]
    outcome = run_ask(settings, question)
    assert outcome.response == "This is the answer to: " + question, (question, outcome.response)
"""


def test_eight_processes_asking_beside_a_purge_loop(ollama: FakeOllama, shared_db: str) -> None:
    """The concurrency figures of docs/concurrency.md come from this test: 8 processes x 200
    asks over 40 questions on a file, 8 x 50 over 25 on PostgreSQL (a network round trip
    per statement)."""
    asks, count = (50, 25) if on_postgres(shared_db) else (200, 40)
    ollama.faults.chunk_delay = 0.005
    assert run_cli("ask", "-q", "-n", "scratch", "doomed scratch entry").exit_code == 0
    start = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(seed), str(asks), str(count)],
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy(), cwd=REPO)
               for seed in range(8)]
    purges = 0
    while any(w.poll() is None for w in workers):
        result = run_cli("purge", "--namespace", "scratch", "--log-older-than", "1d", "--yes")
        assert result.exit_code == 0, result.stderr
        purges += 1
    errors = [w.communicate(timeout=300)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, errors  # each asserted every answer it got
    elapsed = time.monotonic() - start
    generations = ollama.generations - 1  # the scratch entry
    paths = [row.path for row in logged(shared_db) if row.namespace == "default"]
    print(f"\n8 processes x {asks} asks, {count} questions, {purges} purges beside: {generations} generations "
          f"(expected {count}), {len(paths)} log rows, {paths.count('error')} errors, {elapsed:.1f} s")
    assert purges >= 1 and generations == count
    assert len(paths) == 8 * asks and paths.count("model") == count and paths.count("error") == 0
    entries = stored(shared_db)
    assert sorted(e.query for e in entries) == sorted(f"question {n}x{n}" for n in range(count))
    assert all(e.response == f"This is the answer to: {e.query}" for e in entries)
    assert all(claim_free(shared_db, f"question {n}x{n}") for n in range(count))
    if not on_postgres(shared_db):
        assert db_rows(Path(shared_db), "PRAGMA integrity_check")[0][0] == "ok"


@pytest.mark.parametrize("shared_db", [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.slow),  # waits out a real 15 s lease
], indirect=True)
def test_a_killed_holder_is_taken_over_by_one_waiter(ollama: FakeOllama, shared_db: str) -> None:
    question = "who answers when the holder dies"
    ollama.replies[question] = LONG_ANSWER
    ollama.faults.chunk_delay = 0.5  # ~20 s of streaming: time to kill it mid-answer
    holder = asker("-q", question)
    wait_for(lambda: ollama.generations == 1, "the holder to start generating")  # its claim taken first
    embeds_before = ollama.counts["/api/embed"]
    waiters = [asker("-q", question) for _ in range(3)]
    wait_for(lambda: ollama.counts["/api/embed"] == embeds_before + 3, "the waiters to reach the claim")
    assert ollama.generations == 1  # they wait, they do not ask
    holder.kill()  # no chance to release: its pid (SQLite) or its lease (PostgreSQL) ends the claim
    assert finish(holder, timeout=10)[0] == -signal.SIGKILL
    ollama.faults.chunk_delay = 0.0
    results = [finish(w) for w in waiters]
    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    assert {out for _, out, _ in results} == {LONG_ANSWER + "\n"}
    assert ollama.generations == 2  # exactly one more
    assert [e.response for e in stored(shared_db)] == [LONG_ANSWER]
    assert claim_free(shared_db, question)
