"""What an operator meets (issue 23): a purge that keeps its word, damaged entries and
files, read-only stores, the request log of questions nobody wanted kept, and the
shared store's clock. Real files, real processes; docs/operations.md is the manual."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Result, cache_at, run_cli, run_proc, stored
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
    bound = before * 45 // 100
    dry = purge_json("--max-size", str(bound), "--dry-run")
    assert len(stored(isolated_env)) == 66  # a dry run changes nothing
    real = purge_json("--max-size", str(bound))
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
    again = purge_json("--max-size", str(bound))
    assert again["evicted"] == 0 and again["bytes_freed"] == 0 and {e.id for e in stored(isolated_env)} == kept
    vacuumed = purge_json("--max-size", str(bound), "--vacuum")
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
    shown = run_proc("inspect", str(ids[40]), "--json")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["hits"] == 0 and "(hits) shown" in shown.stderr
    gone = run_proc("purge", "--id", str(ids[40]), "--id", str(ids[70]))
    assert gone.exit_code == 0 and len(stored(isolated_env)) == 98


def seeded(db: Path, count: int) -> list[int]:
    with cache_at(db) as store:
        return store.store_many([NewEntry(
            scope="s", exact_key=f"k{i}", namespace="default", model="llama3.2:latest", system=None, options={},
            format=None, query=f"question {i}", response=f"answer {i}", created_at=1_700_000_000.0 + i, ttl=None,
        ) for i in range(count)])
