"""What an operator meets (issue 23): a purge that keeps its word, damaged entries and
files, read-only stores, the request log of questions nobody wanted kept, and the
shared store's clock. Real files, real processes; docs/operations.md is the manual."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, Result, cache_at, logged, run_cli, run_proc, stored
from fake_ollama import FakeOllama

from semcache_cli.storage.models import LogRow, NewEntry


def proc(*args: str, cwd: Path = REPO, umask: int = 0o022, env: dict[str, str] | None = None) -> Result:
    """semcache as a real subprocess, in `cwd`, under `umask` (a user's usual one)."""
    done = subprocess.run([sys.executable, "-m", "semcache_cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, cwd=cwd, umask=umask, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def answered_cache(ollama: FakeOllama, count: int = 66) -> list[str]:
    """A cache as asking makes it: answers of a few hundred bytes to a few KB, the
    request log, the scale; a few questions asked again (hits)."""
    questions = [f"question number {i} about topic {i * 7}" for i in range(count)]
    for i, question in enumerate(questions):
        ollama.replies[question] = "lorem ipsum dolor sit amet " * (20 + (i * 13) % 150)
        assert run_cli("ask", "-q", question).exit_code == 0
    for i in (3, 9, 20):
        assert run_cli("ask", "-q", questions[i]).exit_code == 0
    return questions


def purge_json(*args: str) -> dict:
    result = run_proc("purge", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_max_size_dry_run_is_what_the_real_run_does(ollama: FakeOllama, isolated_env: Path) -> None:
    """Issue 23: "would purge 37 entries; 29 left", then "purged 61 entries ... 5 left",
    then a second run emptied the cache. Now the dry run names the real run's figures,
    the real run stops once under the bound, and running it again deletes nothing."""
    answered_cache(ollama)
    with cache_at(isolated_env) as store:
        before, sizes = store.used_bytes(), store.entry_sizes()  # sizes: least recently used first
    fixed = before - sum(size for _, size in sizes)  # the schema, the log, the reference questions' vectors
    bound = fixed + (before - fixed) * 45 // 100
    dry = purge_json("--max-size", f"{bound}B", "--dry-run")
    assert len(stored(isolated_env)) == 66  # a dry run changes nothing
    real = purge_json("--max-size", f"{bound}B")
    for name in ("evicted", "remaining", "bytes_freed", "bytes_in_use"):
        assert dry[name] == real[name], name
    assert 0 < real["evicted"] < 66 and real["bytes_in_use"] <= bound
    kept = {entry.id for entry in stored(isolated_env)}
    evicted = [(entry_id, size) for entry_id, size in sizes if entry_id not in kept]
    assert len(kept) == real["remaining"] and len(evicted) == real["evicted"]
    assert [entry_id for entry_id, _ in evicted] == [entry_id for entry_id, _ in sizes[:len(evicted)]]  # LRU first
    # no over-deletion: keeping the last entry it evicted would have left it over the bound
    assert real["bytes_in_use"] + evicted[-1][1] > bound
    with cache_at(isolated_env) as store:
        assert store.used_bytes() == real["bytes_in_use"]
    again = purge_json("--max-size", f"{bound}B")
    assert again["evicted"] == 0 and again["bytes_freed"] == 0 and {e.id for e in stored(isolated_env)} == kept
    vacuumed = purge_json("--max-size", f"{bound}B", "--vacuum")
    assert vacuumed["evicted"] == 0 and isolated_env.stat().st_size <= bound  # --vacuum shrinks the file under it



# -- 2. output files are private, and never the store ------------------------------------

def test_replay_out_is_never_the_store(ollama: FakeOllama, isolated_env: Path, tmp_path: Path) -> None:
    """Issue 23: `replay FILE --out cache.db` exited 0 and left the cache unusable. The
    store is recognised by any path to it (relative, symlink, hard link) and refused
    before anything is written."""
    assert run_cli("ask", "-q", "keep me").exit_code == 0
    questions = tmp_path / "questions.txt"
    questions.write_text("first question\nsecond question\n")
    (tmp_path / "link.db").symlink_to(isolated_env)
    os.link(isolated_env, tmp_path / "hard.db")
    size = isolated_env.stat().st_size
    for out in (str(isolated_env), "cache.db", str(tmp_path / "link.db"), str(tmp_path / "hard.db"),
                f"{isolated_env}-wal"):
        result = proc("replay", str(questions), "--out", out, cwd=tmp_path)
        assert result.exit_code == 2, (out, result.stderr)
        assert "is the cache database itself" in result.stderr and "Traceback" not in result.stderr
        assert isolated_env.stat().st_size == size
        assert [entry.query for entry in stored(isolated_env)] == ["keep me"]  # nothing replayed, store intact
    assert run_proc("stats", "-q").exit_code == 0


def test_replay_out_is_created_private(ollama: FakeOllama, isolated_env: Path, tmp_path: Path) -> None:
    """Issue 23: --out files were 0644 although they hold prompts."""
    questions = tmp_path / "questions.txt"
    questions.write_text("a private question\n")
    out = tmp_path / "rows.jsonl"
    result = proc("replay", str(questions), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "a private question" in out.read_text()
    shared = tmp_path / "shared.jsonl"
    shared.write_text("")
    shared.chmod(0o644)
    result = run_proc("replay", str(questions), "--out", str(shared))
    assert result.exit_code == 0 and "readable by other users and will hold your prompts: chmod 600" in result.stderr


def test_copy_refuses_the_same_store_under_another_name(isolated_env: Path, tmp_path: Path) -> None:
    with cache_at(isolated_env) as store:
        store.log_request(LogRow(at=1.0, path="miss"))
    os.link(isolated_env, tmp_path / "hard.db")
    result = run_proc("copy", "--from", str(isolated_env), "--to", str(tmp_path / "hard.db"))
    assert result.exit_code == 2 and "name the same store" in result.stderr


# -- 3. one damaged entry stops nothing ----------------------------------------------------

def damage(db: Path, sql: str) -> None:
    """Change the file as a person with the sqlite3 shell would."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql)
    conn.close()


def test_a_damaged_entry_is_repaired_or_left_out_with_a_warning(isolated_env: Path, tmp_path: Path) -> None:
    """Issue 23: `hits='many'` in one entry stopped copy (0 copied), inspect --jsonl (99 of
    100) and stats (unexpected ValueError)."""
    ids = seeded(isolated_env, 100)
    damage(isolated_env, f"UPDATE entries SET hits = 'many' WHERE id = {ids[40]}")
    damage(isolated_env, f"UPDATE entries SET created_at = 'yesterday' WHERE id = {ids[70]}")
    listed = run_proc("inspect", "--jsonl", "--limit", "0")
    assert listed.exit_code == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 99 and ids[70] not in {row["id"] for row in rows}
    assert next(row for row in rows if row["id"] == ids[40])["hits"] == 0
    assert listed.stderr == (f"semcache: warning: 2 damaged entries in {isolated_env}: entry {ids[70]} (created_at) "
                             f"left out; entry {ids[40]} (hits) shown with those fields reset; "
                             f"semcache purge --id {ids[70]} --id {ids[40]} removes them\n")
    target = tmp_path / "copy.db"
    copied = run_proc("copy", "--from", str(isolated_env), "--to", str(target), "--json")
    assert copied.exit_code == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert (report["read"], report["written"], report["damaged"], report["skipped"]) == (99, 99, 2, 1)
    assert "2 damaged entries" in copied.stderr and len(stored(target)) == 99
    figures = run_proc("stats", "--json")
    assert figures.exit_code == 0, figures.stderr
    entries = json.loads(figures.stdout)["entries"]
    assert entries["total"] == 100 and entries["damaged"] == 2 and "unexpected" not in figures.stderr
    assert f"2 damaged entries in {isolated_env} (entry {ids[40]}, {ids[70]})" in figures.stderr
    assert run_proc("stats").exit_code == 0
    shown = run_proc("inspect", str(ids[40]), "--json")  # one entry asked for by id: the damage is the answer
    assert shown.exit_code == 1 and shown.stderr == (f"semcache: error: entry {ids[40]} of the cache cannot be read "
                                                     "(its stored fields are damaged)\n")
    gone = run_proc("purge", "--id", str(ids[40]), "--id", str(ids[70]))
    assert gone.exit_code == 0 and len(stored(isolated_env)) == 98


def seeded(db: Path, count: int) -> list[int]:
    with cache_at(db) as store:
        return store.store_many([NewEntry(
            scope="s", exact_key=f"k{i}", namespace="default", model="llama3.2:latest", system=None, options={},
            format=None, query=f"question {i}", response=f"answer {i}", created_at=1_700_000_000.0 + i, ttl=None,
        ) for i in range(count)])


# -- 4. a damaged cache file never stops an ask ----------------------------------------------

def damaged_files(tmp_path: Path) -> dict[str, Path]:
    """A file of garbage, a cache cut off half-way (a full disk, a copy that stopped), and
    a text file: what --db or SEMCACHE_DB may point at."""
    real = tmp_path / "real.db"
    with cache_at(real) as store:
        store.store_many([NewEntry(
            scope="s", exact_key=f"k{i}", namespace="default", model="llama3.2:latest", system=None, options={},
            format=None, query=f"question {i}", response="an answer " * 200, created_at=1_700_000_000.0, ttl=None,
        ) for i in range(300)])
        store.checkpoint()
    files = {"garbage": tmp_path / "garbage.db", "truncated": tmp_path / "truncated.db", "text": tmp_path / "notes.db"}
    files["garbage"].write_bytes(os.urandom(64 * 1024))
    files["truncated"].write_bytes(real.read_bytes()[:real.stat().st_size * 2 // 5])
    files["text"].write_text("not a database\n" * 100)
    return files


def test_ask_answers_without_a_damaged_cache(ollama: FakeOllama, tmp_path: Path) -> None:
    """Issue 23: a damaged cache file made every ask fail (exit 1). Now the model answers
    with one warning and the file is left as it was, unless strictness is asked for;
    the commands that are about the cache itself still fail, in one line."""
    for kind, path in damaged_files(tmp_path).items():
        before = path.read_bytes()
        result = proc("ask", "What is a damaged cache?", "--db", str(path))
        assert result.exit_code == 0, (kind, result.stderr)
        assert result.stdout == "This is the answer to: What is a damaged cache?\n"
        warnings = [line for line in result.stderr.splitlines() if line.startswith("semcache: warning:")]
        assert len(warnings) == 1 and warnings[0].endswith(
            "the cache was not used: the model answered, nothing was stored"), (kind, result.stderr)
        assert "miss (cache_unusable)" in result.stderr
        as_json = proc("ask", "What is a damaged cache?", "--db", str(path), "--json")
        assert as_json.exit_code == 0 and json.loads(as_json.stdout)["miss_reason"] == "cache_unusable"
        for strict in (["--strict-cache"], ["--cache-only"]):
            refused = proc("ask", "What is a damaged cache?", "--db", str(path), *strict)
            assert refused.exit_code == 1 and refused.stdout == "", (kind, strict)
            assert len(refused.stderr.splitlines()) == 1 and refused.stderr.startswith("semcache: error: ")
        strict_env = proc("ask", "What is a damaged cache?", "--db", str(path), env={"SEMCACHE_STRICT_CACHE": "1"})
        assert strict_env.exit_code == 1
        for command in (["stats"], ["inspect"], ["purge", "--expired"]):
            failed = proc(*command, "--db", str(path))
            assert failed.exit_code == 1 and failed.stderr.startswith("semcache: error: "), (kind, command)
            assert len(failed.stderr.splitlines()) == 1 and "Traceback" not in failed.stderr
        assert path.read_bytes() == before, kind


# -- 5. read-only stores ---------------------------------------------------------------------

def read_only_mount_works() -> bool:
    """A private mount namespace where the test may bind a directory read-only (root, or
    a user namespace): a real read-only mount, which even root cannot write through."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / / && mount -o remount,bind,ro / /"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def in_read_only_mount(directory: Path, *args: str) -> Result:
    """semcache run where `directory` (the cache's) is mounted read-only, in a mount
    namespace of its own: the mount goes with the process."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(directory), sys.executable, "-m", "semcache_cli",
                           *args], stdin=subprocess.DEVNULL, capture_output=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def without_privileges(*args: str) -> Result:
    """semcache as a process that file modes apply to (as root: without the capabilities
    that let root ignore them)."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, sys.executable, "-m", "semcache_cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def one_warning(result: Result, says: str) -> None:
    warnings = [line for line in result.stderr.splitlines() if line.startswith("semcache: warning:")]
    assert len(warnings) == 1 and says in warnings[0], result.stderr


def check_read_only(run: Callable[..., Result], db: Path, ollama: FakeOllama) -> None:
    """stats and inspect work; ask serves an exact hit and answers a miss without
    storing, each with one warning; nothing in the file changes."""
    before = db.read_bytes()
    hits = {entry.query: entry.hits for entry in stored(db)}
    figures = run("stats", "--json")
    assert figures.exit_code == 0, figures.stderr
    assert json.loads(figures.stdout)["entries"]["total"] == 2
    listed = run("inspect", "--jsonl")
    assert listed.exit_code == 0 and len(listed.stdout.splitlines()) == 2, listed.stderr
    generations = ollama.generations
    hit = run("ask", "What is a read-only cache?")
    assert hit.exit_code == 0 and hit.stdout == "This is the answer to: What is a read-only cache?\n", hit.stderr
    assert "exact hit" in hit.stderr and ollama.generations == generations
    one_warning(hit, "the answer was served, its hit not counted")
    miss = run("ask", "Something never asked before")
    assert miss.exit_code == 0 and miss.stdout == "This is the answer to: Something never asked before\n", miss.stderr
    one_warning(miss, "answered by the model, not stored")
    assert "not stored" in miss.stderr
    assert db.read_bytes() == before
    assert {entry.query: entry.hits for entry in stored(db)} == hits


def cache_of_two(db: Path) -> None:
    for question in ("What is a read-only cache?", "Another question"):
        assert run_cli("ask", "-q", question).exit_code == 0
    with cache_at(db) as store:
        store.checkpoint()  # no write-ahead log left beside it, as after any quiet night


@pytest.mark.skipif(not read_only_mount_works(), reason="no mount namespace here (needs root or user namespaces)")
def test_a_read_only_mount(ollama: FakeOllama, isolated_env: Path) -> None:
    """Issue 23: on a read-only mount stats and inspect failed, ask blamed permissions and
    could not serve an exact hit. A real read-only bind mount (unshare -m)."""
    cache_of_two(isolated_env)
    check_read_only(functools.partial(in_read_only_mount, isolated_env.parent), isolated_env, ollama)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv ignores modes")
def test_a_read_only_file(ollama: FakeOllama, isolated_env: Path) -> None:
    cache_of_two(isolated_env)
    isolated_env.chmod(0o400)
    try:
        check_read_only(without_privileges, isolated_env, ollama)
    finally:
        isolated_env.chmod(0o600)


def test_a_select_only_role_on_the_shared_store(ollama: FakeOllama, postgres_db: str, postgres_server: str) -> None:
    """Issue 23: a SELECT-only role found the hit, then exited 1 because counting it is a
    write. A real role with USAGE on the schema and SELECT on its tables."""
    import urllib.parse
    import uuid

    import psycopg

    question = "What is a read-only cache?"
    writer = proc("ask", "-q", question, "--db", postgres_db)
    assert writer.exit_code == 0, writer.stderr
    role = f"reader_{uuid.uuid4().hex[:8]}"
    schema = urllib.parse.parse_qs(urllib.parse.urlsplit(postgres_db).query)["schema"][0]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    parts = urllib.parse.urlsplit(postgres_db)
    reader = urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))
    try:
        (entry,) = stored(postgres_db)
        rows = len(logged(postgres_db))
        generations = ollama.generations
        hit = proc("ask", question, "--db", reader)
        assert hit.exit_code == 0 and hit.stdout == f"This is the answer to: {question}\n", hit.stderr
        assert "exact hit" in hit.stderr and ollama.generations == generations
        one_warning(hit, "the answer was served, its hit not counted")
        miss = proc("ask", "Something never asked before", "--db", reader)
        assert miss.exit_code == 0 and miss.stdout == "This is the answer to: Something never asked before\n"
        one_warning(miss, "answered by the model, not stored")
        for command in (["stats", "-q"], ["inspect", "--jsonl"], ["purge", "--expired", "--dry-run"]):
            assert proc(*command, "--db", reader).exit_code == 0, command
        refused = proc("purge", "--all", "--yes", "--db", reader)
        assert refused.exit_code == 1 and "refused" in refused.stderr
        assert [e.hits for e in stored(postgres_db)] == [entry.hits] and len(logged(postgres_db)) == rows
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


# -- 17. the request log keeps no question nobody wanted kept ----------------------------

def test_no_store_keeps_no_question_in_the_log(ollama: FakeOllama, isolated_env: Path, tmp_path: Path) -> None:
    """Issue 23: `--no-store --no-cache` questions stayed in the request log, readable by
    anyone with `replay --from-log --dry-run --out`. Now the row counts the ask only."""
    assert run_cli("ask", "-q", "an ordinary question").exit_code == 0
    for flags in (["--no-store", "--no-cache"], ["--no-store"]):
        result = run_cli("ask", "-q", "my secret diagnosis", *flags)
        assert result.exit_code == 0 and result.stdout == "This is the answer to: my secret diagnosis\n"
    assert run_cli("ask", "-q", "an ordinary question", "--no-store").exit_code == 0  # a hit, not stored anyway
    rows = logged(isolated_env)
    assert [row.path for row in rows] == ["model", "model", "model", "exact"]
    for row in rows[1:]:
        assert row.query is None and row.exact_key is None
    assert rows[1].miss_reason == "bypass"
    out = tmp_path / "rows.jsonl"
    replayed = proc("replay", "--from-log", "--dry-run", "--out", str(out))
    assert replayed.exit_code == 0, replayed.stderr
    assert "an ordinary question" in out.read_text() and "secret" not in out.read_text()
    for path in isolated_env.parent.glob("cache.db*"):
        assert b"secret" not in path.read_bytes(), path
    assert json.loads(run_cli("stats", "--json").stdout)["requests"]["asks"] == 4  # still counted


def test_purge_by_content_takes_the_log_rows_too(ollama: FakeOllama, isolated_env: Path) -> None:
    """Issue 23: `purge --grep`/`--namespace` left the request log's rows behind."""
    from conftest import calibrated

    calibrated(isolated_env)
    for args in (["How do I reset my password?"], ["How do I reset my password please"],
                 ["What time is it?"], ["team question", "-n", "team"]):
        assert run_cli("ask", "-q", *args).exit_code == 0
    rows = logged(isolated_env)
    assert [row.path for row in rows] == ["model", "semantic", "model", "model"]  # the paraphrase was a hit
    dry = purge_json("--grep", "password", "--dry-run")
    real = purge_json("--grep", "password")
    assert dry["log_rows_deleted"] == real["log_rows_deleted"] == 2 and real["deleted"] == 1
    assert [row.query for row in logged(isolated_env)] == ["What time is it?", "team question"]
    gone = purge_json("--namespace", "team")
    assert gone["deleted"] == 1 and gone["log_rows_deleted"] == 1
    assert [row.query for row in logged(isolated_env)] == ["What time is it?"]
    kept = purge_json("--expired")  # a time selector leaves the log to --log-older-than
    assert kept["log_rows_deleted"] == 0 and len(logged(isolated_env)) == 1


# -- 18. the shared store's clock, not each client's -------------------------------------------

DAY = 86400.0


def with_clock_off_by(seconds: float, tmp_path: Path, *args: str) -> Result:
    """semcache as a process whose clock is `seconds` off (a host whose clock drifted):
    time.time() of that process alone is shifted, by a sitecustomize module on its path;
    the test's own clock, and the servers', are left alone."""
    shim = tmp_path / f"clock{int(seconds)}"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import time\n_real = time.time\n"
        f"time.time = lambda: _real() + {seconds!r}\n"
        f"time.time_ns = lambda: int((_real() + {seconds!r}) * 1e9)\n")
    done = subprocess.run([sys.executable, "-m", "semcache_cli", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{REPO}"})
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def test_the_shared_store_runs_on_the_servers_clock(ollama: FakeOllama, postgres_db: str, tmp_path: Path) -> None:
    """Issue 23: a host 8 days fast running the nightly `purge --expired` deleted every
    live entry; one 30 days fast stored `--ttl 1h` answers that lived a month."""
    import time

    assert proc("ask", "-q", "a live question", "--ttl", "1d", "--db", postgres_db).exit_code == 0
    probe = with_clock_off_by(8 * DAY, tmp_path, "--version")
    assert probe.exit_code == 0  # the shifted clock runs semcache
    fast = functools.partial(with_clock_off_by, 8 * DAY, tmp_path)
    purged = fast("purge", "--expired", "--json", "--db", postgres_db)
    assert purged.exit_code == 0, purged.stderr
    assert json.loads(purged.stdout)["deleted"] == 0
    assert [entry.query for entry in stored(postgres_db)] == ["a live question"]
    figures = json.loads(fast("stats", "--json", "--db", postgres_db).stdout)
    assert figures["entries"]["expired"] == 0
    assert fast("inspect", "--expired", "--jsonl", "--db", postgres_db).stdout == ""
    assert len(fast("inspect", "--live", "--jsonl", "--db", postgres_db).stdout.splitlines()) == 1
    replayed = fast("replay", "--from-log", "--since", "1d", "--dry-run", "--json", "--db", postgres_db)
    assert replayed.exit_code == 0 and json.loads(replayed.stdout)["reports"][0]["queries"] == 1, replayed.stdout
    hit = fast("ask", "a live question", "--db", postgres_db)
    assert hit.exit_code == 0 and "exact hit" in hit.stderr, hit.stderr  # live on the server's clock
    month_fast = with_clock_off_by(30 * DAY, tmp_path, "ask", "-q", "a short-lived answer", "--ttl", "1h",
                                   "--db", postgres_db)
    assert month_fast.exit_code == 0, month_fast.stderr
    (short,) = [entry for entry in stored(postgres_db) if entry.query == "a short-lived answer"]
    assert short.expires_at is not None and abs(short.expires_at - (time.time() + 3600)) < 120
    assert abs(short.created_at - time.time()) < 120
    (live,) = [entry for entry in stored(postgres_db) if entry.query == "a live question"]
    assert live.last_hit_at is not None and abs(live.last_hit_at - time.time()) < 120
    slow = with_clock_off_by(-8 * DAY, tmp_path, "purge", "--older-than", "1d", "--dry-run", "--json",
                             "--db", postgres_db)
    assert json.loads(slow.stdout)["matched"] == 0  # nothing created over a day ago, on the server's clock
    assert len(stored(postgres_db)) == 2


def test_strict_cache_is_a_setting(ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> None:
    damaged = damaged_files(tmp_path)["garbage"]
    bad = proc("ask", "a question", "--db", str(damaged), env={"SEMCACHE_STRICT_CACHE": "maybe"})
    assert bad.exit_code == 2 and bad.stderr == "semcache: error: SEMCACHE_STRICT_CACHE takes true or false, got 'maybe'\n"
    config = tmp_path / "xdg-config" / "semcache"
    config.mkdir(parents=True)
    (config / "config.toml").write_text("strict_cache = true\n")
    assert proc("ask", "a question", "--db", str(damaged)).exit_code == 1
    (config / "config.toml").write_text("strict_cache = false\n")
    assert proc("ask", "a question", "--db", str(damaged)).exit_code == 0
