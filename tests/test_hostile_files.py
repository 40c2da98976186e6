"""What a user can point semcache at, and what a cache file can hold after a broken
version, a hand edit or a full disk: each a clean exit with one line, nothing wrong
stored, and the file left as it was. Real files and real processes throughout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, calibrated, claim_free, run_cli, run_proc, stored
from fake_ollama import FakeOllama

Q = "How do I reset my password?"


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("semcache: error: ")
    return line


def digest(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage(db: Path, sql: str) -> None:
    """Change the file behind semcache's back, as a broken version or a hand edit would."""
    conn = sqlite3.connect(db)
    conn.execute(sql)
    conn.commit()
    conn.close()


# -- what a cache file can hold ------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "UPDATE entries SET prompt_tokens = 'many'",  # a count of the wrong type
    "UPDATE entries SET expires_at = 1e300, ttl = 1e300",  # an expiry past any date
    "UPDATE entries SET metadata = '{not json'",
    "UPDATE entries SET hits = -4",
], ids=["count-text", "expiry-1e300", "metadata-json", "negative-hits"])
def test_an_entry_that_cannot_be_read_is_a_miss_said_once_and_replaced(ollama: FakeOllama, isolated_env: Path,
                                                                        sql: str) -> None:
    assert run_cli("ask", "-q", Q).exit_code == 0
    damage(isolated_env, sql)
    shown = run_cli("inspect", "1")
    assert shown.exit_code == 1
    assert one_line_error(shown.stderr) == ("semcache: error: entry 1 of the cache cannot be read (its stored "
                                            "fields are damaged)")
    asked = run_cli("ask", "--json", Q)
    assert asked.exit_code == 0, asked.stderr
    assert json.loads(asked.stdout)["source"] == "model"  # a miss, answered again
    assert asked.stderr.count("entry 1 of the cache cannot be read") == 1
    assert "treated as a miss (semcache purge --id 1 removes it)" in asked.stderr
    (entry,) = stored(isolated_env)  # the fresh answer replaced it, under the same id
    assert entry.id == 1 and entry.prompt_tokens == 6 and entry.hits == 0
    assert "exact hit" in run_cli("ask", Q).stderr


def test_an_unreadable_neighbour_is_skipped(ollama: FakeOllama, isolated_env: Path) -> None:
    calibrated(isolated_env)
    assert run_cli("ask", "-q", Q).exit_code == 0
    damage(isolated_env, "UPDATE entries SET created_at = 'yesterday'")
    result = run_cli("ask", "--json", "how do I reset my password please")
    assert result.exit_code == 0 and json.loads(result.stdout)["miss_reason"] == "no_match"
    assert "entry 1 of the cache cannot be read" in result.stderr


def test_text_that_is_not_utf8_in_the_file_is_damage_and_nothing_is_written(ollama: FakeOllama,
                                                                            isolated_env: Path) -> None:
    assert run_cli("ask", "-q", Q).exit_code == 0
    damage(isolated_env, "UPDATE entries SET response = CAST(X'54686973206973fffe' AS TEXT)")
    before = digest(isolated_env)
    result = run_proc("ask", Q, "--strict-cache")  # issue 23: an error only when asked to be strict
    assert result.exit_code == 1
    assert one_line_error(result.stderr) == (
        f"semcache: error: the cache database {isolated_env} is damaged (text in it is not valid UTF-8); move it "
        "aside (semcache starts a new one) or restore a backup")
    assert digest(isolated_env) == before
    result = run_proc("ask", Q)  # otherwise the model answers, with one warning, and nothing is written
    assert result.exit_code == 0 and result.stdout == f"This is the answer to: {Q}\n"
    assert result.stderr.count("semcache: warning: ") == 1 and "is damaged (text in it is not valid UTF-8)" in result.stderr
    assert digest(isolated_env) == before


# -- durations, text, paths and files a user gives -------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--ttl", "100000000d"], "--ttl: '100000000d' is longer than semcache allows (100 years; a TTL can be 'never')"),
    (["--timeout", "99999999999999999999s"], "--timeout: '99999999999999999999s' is longer than semcache allows"),
    (["--timeout", "0s"], "--timeout: must be a positive duration"),
])
def test_durations_past_the_documented_maximum_are_exit_2(ollama: FakeOllama, isolated_env: Path, args: list[str],
                                                          message: str) -> None:
    result = run_proc("ask", Q, *args)
    assert result.exit_code == 2 and message in one_line_error(result.stderr)
    assert ollama.generations == 0 and not isolated_env.exists()


def test_a_config_file_ttl_past_the_maximum_is_exit_2(isolated_env: Path, tmp_path: Path) -> None:
    (tmp_path / "conf.toml").write_text('ttl = "99999999999d"\n')
    result = run_proc("ask", Q, env={"SEMCACHE_CONFIG": str(tmp_path / "conf.toml")})
    assert result.exit_code == 2 and "ttl: '99999999999d' is longer than semcache allows" in one_line_error(result.stderr)


@pytest.mark.parametrize("kind", ["missing", "directory", "binary"])
def test_a_named_config_file_must_be_there_and_be_text(ollama: FakeOllama, isolated_env: Path, tmp_path: Path,
                                                       kind: str) -> None:
    path = tmp_path / "named.toml"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    result = run_proc("ask", Q, env={"SEMCACHE_CONFIG": str(path)})
    assert result.exit_code == 2
    expected = {"missing": " (SEMCACHE_CONFIG) does not exist", "directory": " (SEMCACHE_CONFIG) is not a file",
                "binary": ": not a text file (not valid UTF-8)"}[kind]
    assert one_line_error(result.stderr) == f"semcache: error: config file {path}{expected}"
    assert ollama.generations == 0


def semcache_bytes(*args: bytes, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable.encode(), b"-m", b"semcache_cli", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize(("args", "message"), [
    ([b"ask", b"caf\xe9 au lait"], "the question is not valid UTF-8"),
    ([b"ask", b"-n", b"team-\xff", b"a question"], "--namespace: not valid UTF-8"),
    ([b"ask", b"-s", b"be \xc3", b"a question"], "--system: not valid UTF-8"),
])
def test_bytes_that_are_not_utf8_in_argv_are_exit_2_before_any_call(ollama: FakeOllama, isolated_env: Path,
                                                                    args: list[bytes], message: str) -> None:
    result = semcache_bytes(*args)
    assert result.returncode == 2
    assert message in one_line_error(result.stderr.decode())
    assert ollama.seen == [] and not isolated_env.exists()


@pytest.mark.parametrize(("value", "message"), [
    (" ", "SEMCACHE_DB: expected a non-empty string"),
    ("/dev/null", "database path /dev/null is not a regular file (a device or a pipe)"),
])
def test_a_database_path_that_is_blank_or_a_device_is_exit_2(ollama: FakeOllama, tmp_path: Path, value: str,
                                                             message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "semcache_cli", "ask", Q], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, cwd=tmp_path, env={**os.environ, "SEMCACHE_DB": value},
                            timeout=60)
    assert result.returncode == 2 and message in one_line_error(result.stderr)
    assert list(tmp_path.iterdir()) == [] and not Path("/dev/null-journal").exists()
    assert ollama.generations == 0


def test_a_database_path_that_is_a_directory_is_exit_2(tmp_path: Path) -> None:
    result = run_proc("stats", "--db", str(tmp_path))
    assert result.exit_code == 2 and one_line_error(result.stderr) == \
        f"semcache: error: database path {tmp_path} is a directory"


def test_read_only_commands_leave_the_write_ahead_log_as_they_found_it(ollama: FakeOllama, isolated_env: Path,
                                                                       tmp_path: Path) -> None:
    for i in range(5):
        assert run_cli("ask", "-q", f"question {i}x{i}").exit_code == 0
    # A writer that has not folded its log back yet (another process, still running).
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys
        conn = sqlite3.connect({str(isolated_env)!r}, isolation_level=None)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("UPDATE entries SET hits = hits + 1")
        print("ready", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        wal = Path(f"{isolated_env}-wal")
        before = (wal.read_bytes(), isolated_env.read_bytes())
        for args in (["stats"], ["inspect"], ["inspect", "1"], ["purge", "--expired", "--dry-run"],
                     ["replay", "--from-log", "--dry-run"]):
            assert run_proc(*args).exit_code == 0, args
            assert (wal.read_bytes(), isolated_env.read_bytes()) == before, args
    finally:
        holder.communicate("", timeout=10)


# -- signals and the machine ---------------------------------------------------------------

def test_ctrl_c_works_even_when_started_with_sigint_ignored(ollama: FakeOllama, isolated_env: Path) -> None:
    # As a background job of a non-interactive shell starts (`cmd &` in a script).
    ollama.replies[Q] = " ".join(f"word{i}" for i in range(40))
    ollama.faults.chunk_delay = 0.2
    proc = subprocess.Popen([sys.executable, "-m", "semcache_cli", "ask", "--stream", Q], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout is not None and proc.stdout.read(5) == b"word0"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "semcache: error: interrupted; nothing partial was stored"
    assert stored(isolated_env) == [] and claim_free(isolated_env, Q)


def test_an_old_sqlite_library_is_refused_with_what_to_do(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    result = run_cli("ask", Q)
    assert result.exit_code == 1
    assert one_line_error(result.stderr) == ("semcache: error: this Python's SQLite is 3.31.1; semcache needs 3.35.0 "
                                             "or newer (RETURNING): use a newer Python build")
    assert not isolated_env.exists()


DISK_FULL = """
import json, os, subprocess, sys, sqlite3
root, url = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", root], check=True)
env = {**os.environ, "SEMCACHE_DB": f"{root}/cache.db", "OLLAMA_HOST": url}
def ask(question):
    r = subprocess.run([sys.executable, "-m", "semcache_cli", "ask", question], capture_output=True, text=True,
                       env=env, stdin=subprocess.DEVNULL)
    return r.returncode, r.stderr
report = {"first": ask("the first question")}
ballast = open(f"{root}/ballast", "wb", buffering=0)  # the rest of the disk taken by something else
try:
    while True:
        ballast.write(b"x" * 4096)
except OSError:
    ballast.close()
report["full"] = ask("a question asked when the disk is full")
os.unlink(f"{root}/ballast")
conn = sqlite3.connect(f"{root}/cache.db")
report["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
report["entries"] = [r[0] for r in conn.execute("SELECT query FROM entries")]
conn.close()
report["after"] = ask("a question asked when the disk is full")
report["hit"] = ask("the first question")
print(json.dumps(report))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_full_disk_is_said_so_and_the_cache_is_left_good(ollama: FakeOllama, tmp_path: Path) -> None:
    """A real small file system (tmpfs), in a mount namespace of the test's own."""
    root = tmp_path / "disk"
    root.mkdir()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", DISK_FULL,
                           str(root), ollama.url], capture_output=True, text=True, cwd=REPO, timeout=300)
    if proc.returncode and "mount" in proc.stderr and ("permission" in proc.stderr.lower()
                                                       or "not permitted" in proc.stderr):
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["first"][0] == 0
    code, err = report["full"]
    assert code == 1, err
    line = one_line_error(err)
    assert line.startswith(f"semcache: error: the disk holding {root}/cache.db is full")
    assert "the cache was left as it was" in line and "damaged" not in line
    assert report["integrity"] == "ok" and report["entries"] == ["the first question"]
    assert report["after"][0] == 0  # space freed: asked again, answered and stored, no stale claim in the way
    assert report["hit"][0] == 0 and "exact hit" in report["hit"][1]
