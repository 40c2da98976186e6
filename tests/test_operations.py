"""What an operator meets (issue 23): a purge that keeps its word, damaged entries and
files, read-only stores, the request log of questions nobody wanted kept, and the
shared store's clock. Real files, real processes; docs/operations.md is the manual."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Result, cache_at, run_cli, run_proc, stored
from fake_ollama import FakeOllama

from semcache_cli.storage.models import LogRow


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
