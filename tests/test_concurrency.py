"""Real processes on one cache file: signals mid-stream, and the lease thread renewing a
held claim. Single-flight on every backend: tests/test_single_flight.py. No sleeps that
race: every wait polls a condition with a deadline."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cache_at, claim_free, run_cli, stored
from fake_ollama import FakeOllama

LONG_ANSWER = " ".join(f"word{i}" for i in range(40))


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
