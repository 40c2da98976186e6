"""Faults on both sides, each through the CLI: Ollama down, unknown, slow, hung or busy;
cache files that are unreadable, read-only, damaged or world-readable; secrets that must
never reach the cache. One line on stderr, the right exit code, no changed file."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, claim_free, logged, run_cli, run_proc, stored
from fake_ollama import BUSY_TEXT, FakeOllama


@pytest.fixture(autouse=True)
def _no_reference_bootstrap(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about Ollama's faults: a new cache's one-off embedding of the reference
    questions (tests/test_cold_start.py) would add a request and a status line to each."""
    monkeypatch.setenv("SEMCACHE_SCALE", "cosine")

Q = "how do faults show"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("semcache: error: ")
    return lines[0]


def test_unknown_host_exits_4_naming_the_url(isolated_env: Path) -> None:
    result = run_proc("ask", Q, env={"OLLAMA_HOST": "http://no-such-host.invalid:11434"})
    assert result.exit_code == 4
    line = one_line_error(result.stderr)
    assert "http://no-such-host.invalid:11434" in line and "ollama serve" in line


def test_a_hang_beyond_the_timeout_exits_4_and_stores_nothing(ollama: FakeOllama, isolated_env: Path) -> None:
    ollama.faults.hang = True
    result = run_cli("ask", Q, "--timeout", "1s")
    assert result.exit_code == 4 and "timed out" in one_line_error(result.stderr)
    assert stored(isolated_env) == [] and claim_free(isolated_env, Q)


def test_a_slow_first_token_within_the_timeout_is_answered(ollama: FakeOllama, isolated_env: Path) -> None:
    ollama.faults.delay = 1.5  # a cold model load
    result = run_cli("ask", "-q", Q, "--timeout", "5s")
    assert result.exit_code == 0 and result.stdout == f"This is the answer to: {Q}\n"


def test_busy_beyond_the_retries_fails_clearly(ollama: FakeOllama, isolated_env: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("semcache_cli.ollama.BUSY_RETRY_DELAYS_S", (0.0, 0.0, 0.0))  # their lengths: test_ollama_client
    ollama.faults.chat_status = (503, BUSY_TEXT)  # every try, after the bounded retries
    result = run_cli("ask", Q)
    assert result.exit_code == 1 and "busy" in one_line_error(result.stderr)
    assert ollama.counts["/api/chat"] == 4  # the request and its three retries
    assert stored(isolated_env) == []


def test_a_world_readable_cache_gets_a_warning(ollama: FakeOllama, isolated_env: Path) -> None:
    assert run_cli("ask", "-q", Q).exit_code == 0
    isolated_env.chmod(0o644)
    result = run_cli("ask", "-q", Q)
    assert result.exit_code == 0 and result.stdout == f"This is the answer to: {Q}\n"
    assert result.stderr == (f"semcache: warning: {isolated_env} is readable by other users and holds your prompts: "
                             f"chmod 600 {isolated_env}\n")
    isolated_env.chmod(0o600)
    assert run_cli("ask", "-q", Q).stderr == ""


def test_a_damaged_database_is_one_line_and_left_as_it_was(ollama: FakeOllama, isolated_env: Path) -> None:
    for i in range(30):
        assert run_cli("ask", "-q", f"question {i}x{i}").exit_code == 0
    conn = sqlite3.connect(isolated_env)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index_root = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'idx_entries_scope_exact_key'").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(isolated_env.read_bytes())
    data[(index_root - 1) * page:(index_root - 1) * page + 64] = b"\xa5" * 64  # the exact-key index's root page
    isolated_env.write_bytes(bytes(data))
    before = digest(isolated_env)
    result = run_proc("ask", "question 3x3", "--strict-cache")  # issue 23: only when asked to be strict
    assert result.exit_code == 1
    assert f"the cache database {isolated_env} is damaged" in one_line_error(result.stderr)
    assert digest(isolated_env) == before
    result = run_proc("ask", "question 3x3")  # the cache is an optimisation: the model answers without it
    assert result.exit_code == 0 and result.stdout == "This is the answer to: question 3x3\n"
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"the cache database {isolated_env} is damaged" in warnings[0]
    assert digest(isolated_env) == before


def run_without_privileges(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """semcache as a process that file modes apply to: as root (CI containers), drop the
    capabilities that let root ignore them."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, "-m", "semcache_cli", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, **env}, cwd=REPO, timeout=60)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv ignores modes")
@pytest.mark.parametrize("mode", [0o000], ids=["unreadable"])  # read-only: tests/test_operations.py
def test_a_database_without_read_and_write_permission(ollama: FakeOllama, isolated_env: Path, mode: int) -> None:
    assert run_cli("ask", "-q", Q).exit_code == 0
    isolated_env.chmod(mode)
    try:
        before = digest(isolated_env) if mode else None
        result = run_without_privileges("ask", Q, env={"OLLAMA_HOST": ollama.url})
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr
        assert f"cannot read and write the database {isolated_env}: permission denied" in one_line_error(stderr)
        assert result.stdout == b""
    finally:
        isolated_env.chmod(0o600)
    if before is not None:
        assert digest(isolated_env) == before
    assert len(logged(isolated_env)) == 1  # nothing was logged


def test_credentials_never_reach_the_cache_or_the_log(ollama: FakeOllama, isolated_env: Path) -> None:
    host = ollama.url.replace("http://", "http://alice:hunter2secret@")
    env = {"OLLAMA_HOST": host, "OLLAMA_API_KEY": "sk-topsecretkey"}
    assert run_proc("ask", "-q", Q, env=env).exit_code == 0
    assert run_proc("ask", "-q", Q, env=env).exit_code == 0  # a hit
    assert run_proc("ask", "-q", "new one", env={**env, "OLLAMA_HOST": "http://bob:pw9secret@127.0.0.1:9"}).exit_code == 4
    for path in isolated_env.parent.glob("cache.db*"):
        content = path.read_bytes()
        for secret in (b"hunter2secret", b"sk-topsecretkey", b"pw9secret", b"alice"):
            assert secret not in content, (path, secret)
    assert len(logged(isolated_env)) == 3


@pytest.mark.parametrize("key", ["sk-abc\r\nX-Injected: 1", "sk-abc\n", "sk-\tabc", "sk-\x1b[2Jabc", "sk abc", "sk-ключ"],
                         ids=["crlf", "lf", "tab", "escape", "space", "non-ascii"])
def test_an_api_key_that_could_forge_headers_is_refused_before_any_request(
        ollama: FakeOllama, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    result = run_cli("ask", Q)
    assert result.exit_code == 2
    line = one_line_error(result.stderr)
    assert line.startswith("semcache: error: OLLAMA_API_KEY: character ") and "abc" not in line
    assert ollama.seen == []  # not one request, so no forged header anywhere


@pytest.mark.parametrize("host", ["127.0.0.1:0", "http://", "127.0.0.1:70000", "127.0.0.1:port", "my host"])
def test_an_ollama_host_that_means_a_wrong_url_exits_2(isolated_env: Path, host: str) -> None:
    result = run_proc("ask", Q, env={"OLLAMA_HOST": host})
    assert result.exit_code == 2 and one_line_error(result.stderr).startswith("semcache: error: OLLAMA_HOST: ")


def test_a_wrong_path_in_ollama_host_is_not_a_missing_model(ollama: FakeOllama, isolated_env: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Every route under /wrong is the server's plain-text "404 page not found", unlike a missing model's JSON 404.
    monkeypatch.setenv("OLLAMA_HOST", ollama.url + "/wrong")
    result = run_cli("ask", Q)
    assert result.exit_code == 4
    line = one_line_error(result.stderr)
    assert "no Ollama API at" in line and "check the host, port and path in OLLAMA_HOST" in line
    assert [path for _, path, _ in ollama.seen] == ["/wrong/api/embed", "/wrong/api/embeddings"]  # the v0.2.6 fallback kept
    assert stored(isolated_env) == []


def test_a_missing_model_is_still_exit_5(ollama: FakeOllama, isolated_env: Path) -> None:
    result = run_cli("ask", Q, "-m", "llama9")
    assert result.exit_code == 5 and "ollama pull llama9" in one_line_error(result.stderr)


def test_a_multi_line_error_from_ollama_is_one_line(ollama: FakeOllama, isolated_env: Path) -> None:
    ollama.faults.chat_status = (500, "llama runner process has terminated:\nexit status 2\n\x1b[31mCUDA error\x1b[0m")
    result = run_cli("ask", Q)
    assert result.exit_code == 1
    assert one_line_error(result.stderr).endswith(
        "failed: llama runner process has terminated: exit status 2 [31mCUDA error[0m (HTTP 500)")
