"""Many real processes on one shared PostgreSQL store, as a team's machines or a fleet of
CI runners use it: another machine's miss served here, the server stopped mid-run, a
connection dropped mid-answer (single-flight on every backend: tests/test_single_flight.py).
No sleeps that race: every wait polls a condition with a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, calibrated, claim_free, postgres_url, start_postgres, stored, wait_for
from fake_ollama import FakeOllama

LONG_ANSWER = " ".join(f"word{i}" for i in range(40))


def machine(tmp_path: Path, name: str, db: str, ollama: FakeOllama) -> dict[str, str]:
    """The environment of one machine: its own home, config file (which names the store)
    and cache directory; only the server is shared."""
    home = tmp_path / name
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(f'db = "{db}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMCACHE_")}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config-unused"),
            "XDG_CACHE_HOME": str(home / "cache"), "SEMCACHE_CONFIG": str(home / "config" / "config.toml"),
            "OLLAMA_HOST": ollama.url}


def semcache(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "semcache_cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def test_one_machine_s_miss_is_the_other_s_hit(postgres_db: str, ollama: FakeOllama, tmp_path: Path) -> None:
    laptop, runner = machine(tmp_path, "laptop", postgres_db, ollama), machine(tmp_path, "runner", postgres_db, ollama)
    calibrated(postgres_db)  # a store with enough questions for semantic hits
    code, out, err = finish(semcache(laptop, "ask", "How do I reset my password?"))
    assert code == 0 and "miss (no_match)" in err
    code, out, err = finish(semcache(runner, "ask", "how do I reset my password"))
    assert code == 0 and out == "This is the answer to: How do I reset my password?\n" and "exact hit" in err
    code, out, err = finish(semcache(runner, "ask", "how do I reset my password please"))
    assert code == 0 and "semantic hit" in err
    assert ollama.generations == 1
    for home in ("laptop", "runner"):
        assert not list((tmp_path / home).rglob("*.db"))  # nothing local: one shared store


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    """A PostgreSQL server of this test's own, which it may stop and start again."""
    server = start_postgres(tmp_path_factory, "own-postgres")
    yield server, postgres_url(server.get_uri(), "stopping")  # type: ignore[attr-defined]
    server.cleanup()  # type: ignore[attr-defined]


def test_the_server_stopped_mid_run_gives_clean_errors_and_nothing_partial(
        own_server: tuple[object, str], ollama: FakeOllama, tmp_path: Path) -> None:
    import pgserver

    server, db = own_server
    env = machine(tmp_path, "a", db, ollama)
    assert finish(semcache(env, "ask", "-q", "asked before the stop"))[0] == 0
    ollama.faults.chunk_delay = 0.2
    ollama.replies["asked during the stop"] = LONG_ANSWER
    streaming = semcache(env, "ask", "asked during the stop")
    wait_for(lambda: ollama.generations == 2, "the answer to start streaming")
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)  # type: ignore[attr-defined]
    code, out, err = finish(streaming)
    assert code == 6, err
    assert err.strip().splitlines()[-1].startswith("semcache: error: cannot reach the cache store ")
    assert "Traceback" not in err and out.startswith("word0")  # what streamed stays visible
    for args in (["ask", "a new one"], ["stats"], ["inspect"], ["purge", "--expired"]):
        code, _, err = finish(semcache(env, *args))
        assert code == 6 and err.count("\n") == 1 and "cannot reach the cache store" in err, (args, err)
    for attempt in range(3):  # pg_ctl start gives up after 10 s, which a loaded machine can take
        try:
            server.ensure_postgres_running()  # type: ignore[attr-defined]
            break
        except subprocess.SubprocessError:
            if attempt == 2:
                raise
    ollama.faults.chunk_delay = 0.0
    assert [e.query for e in stored(db)] == ["asked before the stop"]  # nothing half-stored
    code, out, _ = finish(semcache(env, "ask", "-q", "asked during the stop"))
    assert code == 0 and out == LONG_ANSWER + "\n"
    assert claim_free(db, "asked during the stop")


def test_a_connection_dropped_mid_answer_is_replaced_and_the_answer_stored(
        postgres_db: str, postgres_server: str, ollama: FakeOllama, tmp_path: Path) -> None:
    import psycopg

    question = "asked while a pooler drops the connection"
    ollama.replies[question] = LONG_ANSWER
    ollama.faults.chunk_delay = 0.1
    proc = semcache(machine(tmp_path, "a", postgres_db, ollama), "ask", "-q", question)
    wait_for(lambda: ollama.generations == 1, "the answer to start streaming")
    with psycopg.connect(postgres_server, autocommit=True) as admin:  # as an idle timeout would
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'semcache' AND pid != pg_backend_pid()").fetchone()[0]
    assert killed >= 1
    code, out, err = finish(proc)
    assert code == 0 and out == LONG_ANSWER + "\n", err
    assert [e.response for e in stored(postgres_db)] == [LONG_ANSWER]
    assert claim_free(postgres_db, question)
