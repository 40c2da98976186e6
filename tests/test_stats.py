"""`semcache stats`: every figure checked against a request log whose contents we wrote."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import cache_at, calibrated, run_cli, run_proc
from fake_ollama import FakeOllama

from semcache_cli import stats, vectors
from semcache_cli.storage.models import LogRow, NewEntry
from semcache_cli.storage.port import Store

NOW = time.time()
DAY = 86400.0


def entry(store: Store, query: str, *, namespace: str = "default", model: str = "llama3.2:latest",
          embed_model: str | None = "all-minilm:latest", age: float = 0.0, ttl: float | None = 7 * DAY) -> int:
    return store.store_answer(NewEntry(
        scope=f"{namespace}/{model}", exact_key=query, namespace=namespace, model=model, system=None, options={},
        format=None, query=query, response=f"answer to {query}", created_at=NOW - age, ttl=ttl, done_reason="stop",
        embed_model=embed_model, vector=vectors.unit_vector([0.5, 0.5, 0.5, 0.5]) if embed_model else None,
    ))


def log(store: Store, path: str, latency_ms: float, *, age: float = 60.0, similarity: float | None = None,
        miss_reason: str | None = None, saved_s: float | None = None, saved_tokens: int | None = None,
        entry_id: int | None = None) -> None:
    store.log_request(LogRow(at=NOW - age, path=path, latency_ms=latency_ms, similarity=similarity,
                             miss_reason=miss_reason, saved_s=saved_s, saved_tokens=saved_tokens,
                             entry_id=entry_id, namespace="default", model="llama3.2"))


@pytest.fixture
def known(isolated_env: Path) -> Path:
    with cache_at(isolated_env) as store:
        a = entry(store, "a", age=DAY)
        entry(store, "b", age=3 * DAY)
        entry(store, "c", namespace="team", age=8 * DAY)  # expired
        entry(store, "d", model="qwen2.5:latest", embed_model=None, ttl=None, age=10 * DAY)
        for ms in (2, 4, 6, 8, 100):
            log(store, "exact", ms, similarity=1.0, saved_s=3.0, saved_tokens=200, entry_id=a)
        for ms, sim in ((300, 0.91), (320, 0.86), (340, 0.855)):
            log(store, "semantic", ms, similarity=sim, saved_s=2.0, saved_tokens=150, entry_id=a)
        for ms, sim in ((2000, 0.84), (2100, 0.80), (2200, 0.70), (2300, None)):
            log(store, "model", ms, similarity=sim, miss_reason="no_match")
        log(store, "model", 2400, similarity=1.0, miss_reason="expired")
        log(store, "model", 2500, similarity=0.9, miss_reason="low_confidence")
        log(store, "miss", 30, similarity=0.83, miss_reason="no_match")  # --cache-only miss
        log(store, "model", 1900, miss_reason="bypass")  # --no-cache
        log(store, "error", 5, miss_reason="no_match")
        log(store, "exact", 3, age=30 * DAY, similarity=1.0, saved_s=9.0, saved_tokens=900)  # only in "all time"
        for _ in range(7):  # hits on the entry, whose log rows are then trimmed: the log above stays as written
            store.record_hit(a, NOW - 90 * DAY, LogRow(at=NOW - 90 * DAY, path="exact", latency_ms=1.0))
        store.delete_log_before(NOW - 60 * DAY)
    return isolated_env


def test_stored_figures(known: Path) -> None:
    figures = json.loads(run_cli("stats", "--json").stdout)
    stored = figures["entries"]
    assert (stored["total"], stored["live"], stored["expired"]) == (4, 3, 1)
    assert stored["by_namespace"] == {"default": 3, "team": 1}
    assert stored["by_model"] == {"llama3.2:latest": 3, "qwen2.5:latest": 1}
    assert stored["by_embed_model"] == {"all-minilm:latest": 3, "(none)": 1}
    assert stored["oldest"] is not None and stored["oldest"] < stored["newest"]
    assert figures["size_bytes"] >= known.stat().st_size > 0
    assert figures["top_entries"] == [{"id": 1, "hits": 7, "query": "a"}]


def test_request_figures_all_time(known: Path) -> None:
    req = json.loads(run_cli("stats", "--json").stdout)["requests"]
    assert req["asks"] == 18
    assert req["hits"] == {"exact": 6, "semantic": 3, "total": 9}
    assert req["misses"] == {"total": 7, "by_reason": {"no_match": 5, "expired": 1, "low_confidence": 1}}
    assert req["bypasses"] == 1 and req["errors"] == 1
    assert req["hit_rate"] == pytest.approx(9 / 16)
    assert req["time_saved_s"] == pytest.approx(5 * 3.0 + 3 * 2.0 + 9.0)
    assert req["tokens_saved"] == 5 * 200 + 3 * 150 + 900
    assert req["latency_ms"]["exact"] == {"count": 6, "median": 4, "p95": 100}  # 2 3 4 6 8 100, nearest rank
    assert req["latency_ms"]["semantic"] == {"count": 3, "median": 320, "p95": 340}
    assert req["latency_ms"]["model"] == {"count": 7, "median": 2200, "p95": 2500}


def test_since_window(known: Path) -> None:
    req = json.loads(run_cli("stats", "--json", "--since", "7d").stdout)["requests"]
    assert req["asks"] == 17 and req["hits"]["exact"] == 5
    assert req["time_saved_s"] == pytest.approx(21.0) and req["tokens_saved"] == 1450
    assert req["since"] is not None
    assert json.loads(run_cli("stats", "--json", "--since", "1s").stdout)["requests"]["asks"] == 0


def test_similarity_histogram(known: Path) -> None:
    assert json.loads(run_cli("stats", "--json").stdout)["similarity"]["threshold"] == 0.84  # the default
    sim = json.loads(run_cli("stats", "--json", "--threshold", "0.85").stdout)["similarity"]
    assert sim["threshold"] == 0.85 and sim["bin_width"] == 0.02
    bins = {(b["low"], b["high"]): (b["hits"], b["near_misses"]) for b in sim["bins"]}
    assert bins[(0.83, 0.85)] == (0, 2)  # 0.84 (model) and 0.83 (cache-only miss)
    assert bins[(0.79, 0.81)] == (0, 1)  # 0.80
    assert bins[(0.85, 0.87)] == (2, 0)  # 0.86 and 0.855
    assert bins[(0.91, 0.93)] == (1, 0)
    # 0.70 is not near; expired/low_confidence misses are not near-misses; exact hits are not drawn.
    assert sum(h for h, _ in bins.values()) == 3 and sum(m for _, m in bins.values()) == 3
    assert min(bins)[0] == 0.75 and max(bins)[1] == 1.0
    moved = json.loads(run_cli("stats", "--json", "--threshold", "0.9").stdout)["similarity"]["bins"]
    assert {(b["low"], b["high"]): b["hits"] for b in moved}[(0.9, 0.92)] == 1


def test_text_report(known: Path) -> None:
    result = run_cli("stats", "--threshold", "0.85")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[1].startswith("entries      4 (3 live, 1 expired); oldest ")
    assert "  namespace    default 3 · team 1" in lines
    assert "requests (all time)" in lines
    assert "  hits         9 (56.2% hit rate): exact 6, semantic 3" in lines
    assert "  misses       7: no_match 5 · expired 1 · low_confidence 1" in lines
    assert "  saved        30.0 s of generation, 2,350 tokens" in lines
    assert "  latency      exact    median 4.0 ms, p95 100 ms (n=6)" in lines
    assert "  0.83–0.85  ░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░ 2" in lines
    assert "  0.85–0.87  ██████████████████████████████ 2  ◀ threshold" in lines
    assert lines[-1] == "       7 hits  entry 1: a"


def test_before_the_first_ask_the_default_cache_is_empty_and_not_created(
        isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMCACHE_DB")  # the default location, under XDG_CACHE_HOME
    result = run_proc("stats", "--json")  # cron form: no terminal, no stdin
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "xdg-cache" / "semcache").exists()
    figures = json.loads(result.stdout)
    assert figures["entries"]["total"] == 0 and figures["requests"]["asks"] == 0
    assert figures["requests"]["hit_rate"] is None and figures["top_entries"] == []
    text = run_cli("stats").stdout
    assert "entries      0 (0 live, 0 expired)\n" in text and "  hits         0: exact 0, semantic 0\n" in text


def test_stats_of_a_named_cache_that_is_not_there_is_exit_2(isolated_env: Path) -> None:
    result = run_proc("stats")
    assert result.exit_code == 2 and result.stderr == f"semcache: error: there is no cache at {isolated_env} " \
                                                      "(check the path)\n"
    assert not isolated_env.exists()


def test_stats_after_real_asks(ollama: FakeOllama, isolated_env: Path) -> None:
    calibrated(isolated_env)  # semantic lookups on: the misses are no_match, not calibrating
    for args in (["a question"], ["a question"], ["A question?"], ["a question", "--no-cache"], ["other one", "--cache-only"]):
        run_cli("ask", "-q", *args)
    req = json.loads(run_cli("stats", "--json").stdout)["requests"]
    assert req["asks"] == 5
    assert req["hits"]["exact"] == 2 and req["misses"]["by_reason"] == {"no_match": 2} and req["bypasses"] == 1
    assert req["tokens_saved"] > 0 and req["time_saved_s"] > 0


def test_bad_since_is_a_usage_error(isolated_env: Path) -> None:
    result = run_cli("stats", "--since", "yesterday")
    assert result.exit_code == 2 and result.stderr.startswith("semcache: error: --since: 'yesterday' is not a duration")


def test_nearest_rank_percentile() -> None:
    assert stats.percentile([], 50) is None
    assert stats.percentile([5.0], 95) == 5.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert stats.percentile([float(i) for i in range(1, 101)], 95) == 95.0
