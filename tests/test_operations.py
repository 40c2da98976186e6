"""What an operator meets (issue 23): a purge that keeps its word, damaged entries and
files, read-only stores, the request log of questions nobody wanted kept, and the
shared store's clock. Real files, real processes; docs/operations.md is the manual."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cache_at, run_cli, run_proc, stored
from fake_ollama import FakeOllama


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

