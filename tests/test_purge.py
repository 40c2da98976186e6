"""`semcache purge`: selectors, bounds, dry runs, confirmation, and purging beside askers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cache_at, db_rows, logged, run_cli, run_in_terminal, run_proc, stored
from fake_ollama import FakeOllama

from semcache_cli import vectors
from semcache_cli.storage.models import LogRow, NewEntry

NOW = time.time()
DAY = 86400.0


def seed(db: Path, query: str, *, namespace: str = "default", model: str = "llama3.2:latest",
         age: float = 0.0, ttl: float | None = 7 * DAY, response: str | None = None,
         embed_model: str | None = "nomic-embed-text:latest", last_hit_age: float | None = None) -> int:
    with cache_at(db) as store:
        entry_id = store.store_answer(NewEntry(
            scope=f"{namespace}/{model}", exact_key=query, namespace=namespace, model=model, system=None,
            options={}, format=None, query=query, response=response or f"answer to {query}",
            created_at=NOW - age, ttl=ttl, done_reason="stop",
            embed_model=embed_model, vector=vectors.unit_vector([1.0, 2.0]) if embed_model else None,
        ))
        if last_hit_age is not None:
            store.record_hit(entry_id, NOW - last_hit_age, LogRow(at=NOW - last_hit_age, path="exact"))
        return entry_id


def queries(db: Path) -> list[str]:
    return [entry.query for entry in stored(db)]


def vectors_left(db: Path) -> int:
    with cache_at(db) as store:
        return sum(store.vector_of(entry.id) is not None for entry in stored(db))


@pytest.fixture
def cache(isolated_env: Path) -> Path:
    seed(isolated_env, "fresh default")
    seed(isolated_env, "old default", age=40 * DAY, ttl=None)
    seed(isolated_env, "expired one", age=8 * DAY)
    seed(isolated_env, "team thing", namespace="team")
    seed(isolated_env, "qwen thing", model="qwen2.5:latest", embed_model="all-minilm:latest")
    seed(isolated_env, "Password RESET help", response="Click 'Forgot password'")
    return isolated_env


def test_no_selector_is_a_usage_error(cache: Path) -> None:
    result = run_cli("purge")
    assert result.exit_code == 2 and "purge needs a selector" in result.stderr
    assert len(queries(cache)) == 6


@pytest.mark.parametrize(
    ("args", "gone"),
    [
        (["--expired"], {"expired one"}),
        (["--older-than", "30d"], {"old default"}),
        (["--namespace", "team"], {"team thing"}),
        (["--model", "qwen2.5"], {"qwen thing"}),  # llama3.2 == llama3.2:latest
        (["--embed-model", "all-minilm"], {"qwen thing"}),
        (["--grep", "password reset"], {"Password RESET help"}),  # case-insensitive
        (["--grep", "forgot"], {"Password RESET help"}),  # in the answer too
        (["--namespace", "default", "--older-than", "1d"], {"old default", "expired one"}),  # AND
        (["--namespace", "team", "--expired"], set()),
    ],
)
def test_selectors(cache: Path, args: list[str], gone: set[str]) -> None:
    before = set(queries(cache))
    result = run_cli("purge", *args, "--json")
    assert result.exit_code == 0, result.stderr
    assert before - set(queries(cache)) == gone
    report = json.loads(result.stdout)
    assert report["deleted"] == len(gone) and report["remaining"] == 6 - len(gone)
    assert result.stderr.startswith(f"semcache: purged {len(gone)} entr")


def test_ids_are_repeatable(cache: Path) -> None:
    assert run_cli("purge", "--id", "1", "--id", "3").exit_code == 0
    assert "fresh default" not in queries(cache) and "expired one" not in queries(cache)
    assert vectors_left(cache) == 4  # vectors went with their entries


def test_dry_run_changes_nothing(cache: Path) -> None:
    before = stored(cache)
    result = run_cli("purge", "--older-than", "1d", "--dry-run", "--json")
    assert json.loads(result.stdout)["matched"] == 2
    assert result.stderr == "semcache: would purge 2 entries; 4 left\n"
    assert stored(cache) == before


def test_deleting_everything_needs_yes_without_a_terminal(cache: Path) -> None:
    refused = run_cli("purge", "--all")
    assert refused.exit_code == 2 and "pass --yes" in refused.stderr
    also_refused = run_cli("purge", "--older-than", "0s")  # matches every entry: same rule
    assert also_refused.exit_code == 2
    assert run_cli("purge", "--max-entries", "0").exit_code == 2  # evicting every entry: same rule
    assert len(queries(cache)) == 6
    assert run_cli("purge", "--all", "--yes").exit_code == 0
    assert queries(cache) == []


def test_deleting_everything_asks_on_a_terminal(cache: Path) -> None:
    code, text = run_in_terminal("purge", "--all", answer="n")
    # No is a choice, not an error: a plain status line, exit 0.
    assert code == 0 and text == f"Delete all 6 entries of {cache}? [y/N]: n\nsemcache: nothing deleted\n"
    assert len(queries(cache)) == 6
    code, text = run_in_terminal("purge", "--all", answer="y")
    assert code == 0 and "purged 6 entries" in text
    assert queries(cache) == []


def test_ctrl_c_at_the_prompt_is_an_interrupt(cache: Path) -> None:
    code, text = run_in_terminal("purge", "--all", keys=b"\x03")
    assert code == 130  # as the README says of every interrupt; not Click's "Aborted!" and 1
    assert text.splitlines()[-1] == "semcache: error: interrupted; nothing deleted"
    assert "Aborted" not in text and "Traceback" not in text
    assert len(queries(cache)) == 6


def test_end_of_input_at_the_prompt_deletes_nothing(cache: Path) -> None:
    code, text = run_in_terminal("purge", "--all", keys=b"\x04")  # Ctrl-D
    assert code == 0 and text.endswith("semcache: nothing deleted\n")
    assert len(queries(cache)) == 6


def test_max_entries_evicts_least_recently_used(isolated_env: Path) -> None:
    seed(isolated_env, "a", age=10 * DAY, ttl=None, last_hit_age=1.0)  # old but just used
    seed(isolated_env, "b", age=5 * DAY, ttl=None)
    seed(isolated_env, "c", age=3 * DAY, ttl=None)
    seed(isolated_env, "d", age=1 * DAY, ttl=None)
    result = run_cli("purge", "--max-entries", "2", "--json")
    assert result.exit_code == 0
    assert queries(isolated_env) == ["a", "d"]
    assert json.loads(result.stdout)["evicted"] == 2


def in_use(db: Path) -> int:
    with cache_at(db) as store:
        return store.used_bytes()


@pytest.fixture
def big_cache(isolated_env: Path) -> Path:
    """600 entries of a few KB, oldest first; entry 1 and 2 used a minute ago."""
    with cache_at(isolated_env) as store:
        store.store_many([NewEntry(
            scope="s", exact_key=f"k{i}", namespace="default", model="llama3.2:latest", system=None, options={},
            format=None, query=f"question {i}", response="x" * (500 + 37 * (i % 60)), created_at=NOW - DAY + i,
            ttl=None, done_reason="stop", embed_model="all-minilm:latest",
            vector=vectors.unit_vector([float(i + 1)] * 384),
        ) for i in range(600)])
        for entry_id in (1, 2):
            store.record_hit(entry_id, NOW - 60, LogRow(at=NOW - 60, path="exact"))
    return isolated_env


def test_max_size_evicts_least_recently_used_until_under(big_cache: Path) -> None:
    bound = in_use(big_cache) // 2
    result = run_cli("purge", "--max-size", f"{bound}B", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes_in_use"] == in_use(big_cache) <= bound
    kept = [entry.id for entry in stored(big_cache)]
    assert 1 in kept and 2 in kept  # used a minute ago: the most recently used
    evicted = sorted(set(range(1, 601)) - set(kept))
    assert evicted == list(range(3, 3 + len(evicted)))  # the oldest unused went first, no gaps
    assert 240 <= report["evicted"] <= 360  # about half, not everything
    assert vectors_left(big_cache) == len(kept)


def test_max_size_dry_run_and_units(big_cache: Path) -> None:
    before = in_use(big_cache)
    dry = json.loads(run_cli("purge", "--max-size", f"{before // 2 / 1000:.0f}KB", "--dry-run", "--json").stdout)
    assert dry["evicted"] > 150 and in_use(big_cache) == before and dry["remaining"] == 600 - dry["evicted"]
    nothing = json.loads(run_cli("purge", "--max-size", "1GB", "--json").stdout)
    assert nothing["evicted"] == 0 and nothing["remaining"] == 600
    bad = run_cli("purge", "--max-size", "lots")
    assert bad.exit_code == 2 and bad.stderr == "semcache: error: --max-size: 'lots' is not a size (use e.g. 500MB, 2GB, 64MiB)\n"


def test_max_size_with_vacuum_bounds_the_file(big_cache: Path) -> None:
    bound = in_use(big_cache) // 3
    result = run_proc("purge", "--max-size", f"{bound}B", "--vacuum")
    assert result.exit_code == 0, result.stderr
    assert big_cache.stat().st_size <= bound
    assert not Path(f"{big_cache}-wal").exists() or Path(f"{big_cache}-wal").stat().st_size == 0


def test_max_size_below_any_entry_needs_yes(big_cache: Path) -> None:
    with cache_at(big_cache) as store:  # what the store takes with no entries
        floor = store.used_bytes() - sum(size for _, size in store.entry_sizes())
    refused = run_cli("purge", "--max-size", f"{floor + 10}B")
    assert refused.exit_code == 2 and "would delete all 600 entries" in refused.stderr
    assert len(queries(big_cache)) == 600
    done = run_cli("purge", "--max-size", f"{floor + 10}B", "--yes", "--json")
    assert done.exit_code == 0 and queries(big_cache) == []
    assert json.loads(done.stdout)["bytes_in_use"] == floor


def test_max_size_no_purge_can_meet_is_refused_before_deleting(big_cache: Path) -> None:
    """Issue 23: a bound under what the store takes with no entries exited 0 after
    deleting everything; now it is refused (exit 2) and nothing goes."""
    for extra in ([], ["--yes"], ["--dry-run"]):
        result = run_proc("purge", "--max-size", "1KB", *extra)
        assert result.exit_code == 2, result.stderr
        assert result.stderr.startswith("semcache: error: --max-size 1.0 KB cannot be met: with no entries at all "
                                        "the cache would still take ")
        assert "nothing was deleted" in result.stderr and "Traceback" not in result.stderr
        assert len(queries(big_cache)) == 600


def test_log_retention(isolated_env: Path) -> None:
    seed(isolated_env, "x", last_hit_age=10 * DAY)
    seed(isolated_env, "y", last_hit_age=60.0)
    result = run_cli("purge", "--log-older-than", "7d", "--json")
    assert json.loads(result.stdout)["log_rows_deleted"] == 1
    assert len(logged(isolated_env)) == 1
    assert len(queries(isolated_env)) == 2


def test_vacuum_gives_space_back_to_the_disk(isolated_env: Path) -> None:
    for i in range(600):  # well above an empty file's pages (16 KB a table or index)
        seed(isolated_env, f"question {i}", response="x" * 2000)
    with cache_at(isolated_env) as store:
        store.checkpoint()
    size = isolated_env.stat().st_size
    result = run_cli("purge", "--grep", "question", "--yes", "--vacuum", "--json")
    report = json.loads(result.stdout)
    assert report["deleted"] == 600 and report["bytes_freed"] > 1_200_000
    assert isolated_env.stat().st_size < size / 4


def test_purge_on_a_brand_new_database(isolated_env: Path) -> None:
    result = run_cli("purge", "--expired")
    assert result.exit_code == 0 and result.stderr == "semcache: purged 0 entries, 0 B freed; 0 left\n"


def test_purge_in_a_loop_beside_asking_processes(ollama: FakeOllama, isolated_env: Path) -> None:
    seed(isolated_env, "doomed", namespace="scratch")
    seed(isolated_env, "keeper")  # so the purge never matches every entry
    env = {**os.environ, "OLLAMA_HOST": ollama.url}
    askers = [
        subprocess.Popen(
            [sys.executable, "-c",
             "import subprocess, sys\n"
             f"for i in range(8):\n"
             f"    r = subprocess.run([sys.executable, '-m', 'semcache_cli', 'ask', '-q', 'asker question {n}x' + str(i)],"
             " capture_output=True, stdin=subprocess.DEVNULL)\n"
             "    if r.returncode: sys.exit(r.stderr.decode())\n"],
            env=env, cwd=REPO, stderr=subprocess.PIPE)
        for n in range(3)
    ]
    purges = 0
    while any(p.poll() is None for p in askers):
        result = run_cli("purge", "--namespace", "scratch", "--log-older-than", "1d")
        assert result.exit_code == 0, result.stderr
        purges += 1
    for p in askers:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert purges >= 1
    assert len([q for q in queries(isolated_env) if q.startswith("asker")]) == 24  # none lost
    assert "doomed" not in queries(isolated_env) and "keeper" in queries(isolated_env)
    assert db_rows(isolated_env, "PRAGMA integrity_check")[0][0] == "ok"
