"""Many real processes on one cache file: single-flight (one generation per new
question), a killed holder, signals mid-stream, and a purge loop beside it all.
No sleeps that race: every wait polls a condition with a deadline."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, cache_at, claim_free, db_rows, logged, run_cli, stored
from fake_ollama import FakeOllama

LONG_ANSWER = " ".join(f"word{i}" for i in range(40))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def asker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "semcache_cli", "ask", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=REPO)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def not_locked(db: Path) -> bool:
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    finally:
        conn.close()


def test_sixteen_processes_one_new_question_one_generation(ollama: FakeOllama, isolated_env: Path) -> None:
    question = "what does single flight mean here"
    ollama.replies[question] = LONG_ANSWER
    ollama.faults.chunk_delay = 0.02  # the answer takes ~1 s: the others arrive while it streams
    procs = [asker("-q", question) for _ in range(16)]
    results = [finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0] * 16, [err for _, _, err in results]
    assert {out for _, out, _ in results} == {LONG_ANSWER + "\n"}
    assert ollama.generations == 1
    paths = [row.path for row in logged(isolated_env)]
    assert paths.count("model") == 1 and len(paths) == 16
    assert claim_free(isolated_env, question)


WORKER = """
import random, sys
from semcache_cli import config
from semcache_cli.engine import run_ask
seed, asks = int(sys.argv[1]), int(sys.argv[2])
questions = [f"question {n}x{n}" for n in range(40)]
rng = random.Random(seed)
settings = config.load_settings({})
for i in range(asks):
    outcome = run_ask(settings, rng.choice(questions) if i >= 40 else questions[(i + 5 * seed) % 40])
    assert outcome.response == "This is the answer to: " + outcome.response.split(": ", 1)[1]
"""


def test_eight_processes_two_hundred_asks_forty_questions_beside_a_purge_loop(
        ollama: FakeOllama, isolated_env: Path) -> None:
    """The concurrency figures of the closing note come from this test."""
    ollama.faults.chunk_delay = 0.005
    assert run_cli("ask", "-q", "-n", "scratch", "doomed scratch entry").exit_code == 0
    start = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(seed), "200"], stdin=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=os.environ.copy(), cwd=REPO) for seed in range(8)]
    purges = 0
    while any(w.poll() is None for w in workers):
        result = run_cli("purge", "--namespace", "scratch", "--log-older-than", "1d", "--yes")
        assert result.exit_code == 0, result.stderr
        purges += 1
    errors = [w.communicate(timeout=300)[1].decode() for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, errors
    elapsed = time.monotonic() - start
    generations = ollama.generations - 1  # the scratch entry
    paths = [row.path for row in logged(isolated_env) if row.namespace == "default"]
    integrity = db_rows(isolated_env, "PRAGMA integrity_check")[0][0]
    print(f"\n8 processes x 200 asks, 40 questions, {purges} purges beside: {generations} generations "
          f"(expected 40), {len(paths)} log rows, {paths.count('error')} errors, integrity {integrity}, {elapsed:.1f} s")
    assert generations == 40
    assert len(paths) == 1600 and paths.count("model") == 40 and paths.count("error") == 0
    namespaces = [entry.namespace for entry in stored(isolated_env)]
    assert namespaces.count("default") == 40 and "scratch" not in namespaces
    assert integrity == "ok" and all(claim_free(isolated_env, f"question {n}x{n}") for n in range(40))


def test_killed_holder_one_waiter_takes_over(ollama: FakeOllama, isolated_env: Path) -> None:
    question = "who answers when the holder dies"
    ollama.replies[question] = LONG_ANSWER
    ollama.faults.chunk_delay = 0.1  # ~4 s of streaming: time to kill it mid-answer
    holder = asker("-q", question)
    wait_for(lambda: ollama.generations == 1, "the holder to start generating")  # its claim taken first
    embeds_before = ollama.counts["/api/embed"]
    waiters = [asker("-q", question) for _ in range(3)]
    wait_for(lambda: ollama.counts["/api/embed"] == embeds_before + 3, "the waiters to reach the claim")
    assert ollama.generations == 1  # they wait, they do not ask
    holder.kill()
    assert finish(holder, timeout=10)[0] == -signal.SIGKILL  # reaped: its pid is gone
    ollama.faults.chunk_delay = 0.0
    results = [finish(w) for w in waiters]
    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    assert {out for _, out, _ in results} == {LONG_ANSWER + "\n"}
    assert ollama.generations == 2  # exactly one more
    assert len(stored(isolated_env)) == 1
    assert claim_free(isolated_env, question) and not_locked(isolated_env)


@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "terminated")])
def test_signal_mid_stream_stores_nothing_and_leaves_nothing_behind(
        ollama: FakeOllama, isolated_env: Path, signum: int, code: int, word: str) -> None:
    question = "a question cut short"
    ollama.replies[question] = LONG_ANSWER
    ollama.faults.chunk_delay = 0.2
    proc = asker("--stream", question)  # streamed into the pipe, as on a terminal
    assert proc.stdout is not None
    first = proc.stdout.read(5)  # the answer has started streaming
    assert first == b"word0"
    proc.send_signal(signum)
    returncode, rest, err = finish(proc)
    assert returncode == code
    assert err.strip().splitlines()[-1] == f"semcache: error: {word}; nothing partial was stored"
    assert "Traceback" not in err
    assert stored(isolated_env) == []
    assert claim_free(isolated_env, question) and not_locked(isolated_env)
    ollama.faults.chunk_delay = 0.0
    assert run_cli("ask", "-q", question).stdout == LONG_ANSWER + "\n"  # the next ask answers and stores
    assert len(stored(isolated_env)) == 1


def test_a_claim_is_renewed_while_held_and_free_once_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semcache_cli import singleflight

    mine, theirs = cache_at(tmp_path / "c.db"), cache_at(tmp_path / "c.db")
    monkeypatch.setattr(singleflight, "LEASE_S", 0.0)  # taken with a lease that has already run out
    claim = singleflight.Claim(mine, "scope", "key")
    assert claim.try_take()
    monkeypatch.setattr(singleflight, "LEASE_S", 15.0)
    assert singleflight.renew_now(timeout=30)  # the lease thread's next round
    assert not singleflight.Claim(theirs, "scope", "key").try_take()  # still held: renewed
    claim.release()
    again = singleflight.Claim(theirs, "scope", "key")
    assert again.try_take()
    again.release()
    mine.close()
    theirs.close()
