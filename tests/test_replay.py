"""`semcache replay`: input parsing, the live, dry-run and simulate modes, thresholds,
and the reproduction of the CLINC150 baseline table of ../shared/data/README.md."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO,
    SHARED_DATA,
    cache_at,
    calibrated,
    claim_free,
    db_rows,
    logged,
    neutral_scale,
    run_cli,
    run_proc,
    stored,
)
from fake_ollama import FakeOllama, load_clinc_table

from semcache_cli.replay import parse_lines, parse_thresholds
from semcache_cli.storage.models import Entry, LogRow

MINILM = ("--embed-model", "all-minilm")
COSINE = ("--scale", "cosine")  # small made-up scenarios are stated in exact cosines


def at_angle(cosine: float, axis: int = 1) -> np.ndarray:
    vector = np.zeros(384)
    vector[0], vector[axis] = cosine, np.sqrt(1 - cosine**2)
    return vector


def digest(db: Path) -> str:
    with cache_at(db) as store:
        store.checkpoint()
    return hashlib.sha256(db.read_bytes()).hexdigest()


def write(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


# -- input ---------------------------------------------------------------------------------

def test_plain_text_and_jsonl_inputs() -> None:
    items, bad = parse_lines([b"first question", b"", b"  second  ", b"\xff\xfe", b"x\x00y"], 100)
    assert [(i.line, i.query) for i in items] == [(1, "first question"), (3, "second")]
    assert [(b.line, b.reason) for b in bad] == [(4, "not valid UTF-8"), (5, "contains a NUL byte")]
    items, bad = parse_lines([
        b'{"query": "q one", "label": "a", "namespace": "team"}',
        b'{"text": "q two", "model": "qwen2.5", "system": "be brief"}',
        b'{"query": 5}', b"not json", b"[1, 2]", b'{"query": "ok", "label": 7}', b'{"query": "   "}',
        b'{"query": "' + b"x" * 101 + b'"}',
    ], 100)
    assert [(i.query, i.label, i.namespace, i.model, i.system) for i in items] == [
        ("q one", "a", "team", None, None), ("q two", None, None, "qwen2.5", "be brief")]
    assert [(b.line, b.reason) for b in bad] == [
        (3, 'no "query" (or "text") string'), (4, "not valid JSON"), (5, "not a JSON object"),
        (6, '"label" is not a string'), (7, "empty query"), (8, "query of 101 characters, over max_query_chars (100)")]


def test_thresholds() -> None:
    assert parse_thresholds("0.80,0.85,0.9") == [0.8, 0.85, 0.9]
    assert parse_thresholds("0.70:0.75:0.01") == [0.7, 0.71, 0.72, 0.73, 0.74, 0.75]
    for bad in ("", "0.9:0.8:0.01", "a,b", "1.5", "0.7:0.8:0"):
        with pytest.raises(Exception, match="--thresholds"):
            parse_thresholds(bad)


def test_bad_lines_are_reported_and_skipped_or_abort_with_strict(ollama: FakeOllama, tmp_path: Path,
                                                                  isolated_env: Path) -> None:
    path = write(tmp_path / "q.jsonl", [{"query": "good one"}, '{"query": ', {"query": "good two"}])
    strict = run_cli("replay", str(path), "--strict")
    assert strict.exit_code == 2
    assert f"semcache: warning: {path}: line 2: not valid JSON; aborting" in strict.stderr
    assert ollama.generations == 0 and not isolated_env.exists()  # nothing half-parsed is cached
    result = run_cli("replay", str(path), "--json")
    assert result.exit_code == 0 and f"{path}: line 2: not valid JSON; skipped" in result.stderr
    report = json.loads(result.stdout)["reports"][0]
    assert (report["queries"], report["bad_lines"], report["model_calls"]) == (2, 1, 2)
    assert sorted(entry.query for entry in stored(isolated_env)) == ["good one", "good two"]


def test_usage_errors(isolated_env: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", ["a question"])
    assert run_cli("replay").exit_code == 2
    assert run_cli("replay", str(path), "--from-log").exit_code == 2
    assert run_cli("replay", str(path), "--dry-run", "--simulate").exit_code == 2
    assert run_cli("replay", str(path), "--thresholds", "0.8").exit_code == 2  # needs --simulate
    no_labels = run_cli("replay", str(path), "--simulate", "--target-error", "0.01")
    assert no_labels.exit_code == 2 and "needs labelled queries" in no_labels.stderr
    missing = run_cli("replay", str(tmp_path / "nope.txt"))
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


# -- live ----------------------------------------------------------------------------------

def test_live_warms_the_cache_through_the_ask_pipeline(ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> None:
    questions = [f"warm question {n}x{n}" for n in range(12)]
    path = write(tmp_path / "q.txt", questions + questions[:4])  # four repeats
    first = run_cli("replay", str(path), "-j", "4", "--json")
    assert first.exit_code == 0, first.stderr
    report = json.loads(first.stdout)["reports"][0]
    assert report["queries"] == 16 and report["errors"] == 0
    assert ollama.generations == 12  # single-flight: a repeat never asks twice, even in parallel
    assert report["model_calls"] + report["hits"]["total"] == 16
    batches = [len(body["input"]) for path, body in ollama.requests if path == "/api/embed"]
    assert batches.count(16) == 1  # one batched embedding call for all 16
    # and, on a new cache, the reference questions of the model's scale, by one worker (a claim)
    assert batches == [16, 320] or batches == [320, 16]
    assert [entry.dims for entry in stored(isolated_env)] == [768] * 12
    assert len(logged(isolated_env)) == 16
    again = json.loads(run_cli("replay", str(path), "--json").stdout)["reports"][0]
    assert again["hits"]["exact"] == 16 and again["model_calls"] == 0 and ollama.generations == 12
    assert again["time_saved_s"] > 0 and again["tokens_saved"] > 0


def test_live_labels_make_wrong_answers_visible(ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> None:
    ollama.table.update({"base": at_angle(1.0), "close same": at_angle(0.95), "close other": at_angle(0.93, 2)})
    neutral_scale(isolated_env)
    path = write(tmp_path / "q.jsonl", [{"query": "base", "label": "a"}, {"query": "close same", "label": "a"},
                                        {"query": "close other", "label": "b"}])
    report = json.loads(run_cli("replay", str(path), "-j", "1", "--json", *MINILM).stdout)["reports"][0]
    assert (report["hits"]["semantic"], report["correct_hits"], report["wrong_hits"]) == (2, 1, 1)
    assert report["wrong_answer_rate"] == pytest.approx(1 / 3) and report["precision"] == 0.5
    assert stored(isolated_env)[0].metadata == {"label": "a"}


def test_live_stops_on_an_unreachable_server(isolated_env: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", ["one", "two"])
    result = run_proc("replay", str(path))
    assert result.exit_code == 4 and "cannot reach Ollama" in result.stderr and "Traceback" not in result.stderr


def test_live_without_the_embedding_model_falls_back_to_the_exact_layer(ollama: FakeOllama, tmp_path: Path,
                                                                         isolated_env: Path) -> None:
    path = write(tmp_path / "q.txt", ["first question", "second question", "first question"])
    result = run_proc("replay", str(path), "--embed-model", "mxbai-embed-large", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [  # each warning once, however many queries and workers
        "semcache: warning: batch embedding failed (model 'mxbai-embed-large' not found on Ollama at "
        f"{ollama.url}: run `ollama pull mxbai-embed-large`); each query is embedded one at a time, as `ask` does",
        "semcache: warning: embedding model 'mxbai-embed-large' not found: run `ollama pull mxbai-embed-large`; "
        "semantic layer skipped"]
    report = json.loads(result.stdout)["reports"][0]
    assert (report["model_calls"], report["hits"]["exact"], report["hits"]["semantic"]) == (2, 1, 0)
    assert sum(entry.dims is None for entry in stored(isolated_env)) == 2


def test_live_embedding_failing_part_way_leaves_the_rest_to_ask_s_own_fallback(ollama: FakeOllama, tmp_path: Path,
                                                                          isolated_env: Path) -> None:
    # The first batch (256 queries) is embedded and asked while the second fails.
    ollama.faults.embed_status, ollama.faults.embed_status_after = (500, "embedding runner crashed"), 1
    path = write(tmp_path / "q.txt", [f"part way {n}x{n}" for n in range(300)])
    result = run_proc("replay", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    assert "the 44 queries left are embedded one at a time" in result.stderr
    assert "embedding runner crashed (HTTP 500)); semantic layer skipped" in result.stderr
    assert json.loads(result.stdout)["reports"][0]["queries"] == 300
    dims = [entry.dims for entry in stored(isolated_env)]
    assert dims.count(768) == 256 and dims.count(None) == 44


@pytest.mark.parametrize("mode", ["live", "--dry-run", "--simulate"])
def test_a_vector_with_no_direction_costs_its_query_the_semantic_layer_and_no_more(
        ollama: FakeOllama, tmp_path: Path, isolated_env: Path, mode: str) -> None:
    # A broken model gives two questions all-zero vectors: each is still answered (exact layer
    # only, as ask does), the others keep theirs, and the replay goes on.
    ollama.table.update({"zero one": np.zeros(384), "zero two": np.zeros(384), "base": at_angle(1.0),
                         "close": at_angle(0.95)})
    neutral_scale(isolated_env)  # live and dry runs: a scale under which the similarity is these cosines
    if mode == "--dry-run":
        assert run_cli("replay", str(write(tmp_path / "w.txt", ["base", "zero one"])), *MINILM).exit_code == 0
    path = write(tmp_path / "q.txt", ["base", "zero one", "close", "zero two", "zero one"])
    args = ["-j", "1"] if mode == "live" else [mode, *COSINE] if mode == "--simulate" else [mode]  # -j 1: in order
    result = run_cli("replay", str(path), *args, "--json", *MINILM)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["reports"][0]
    assert report["queries"] == 5 and report["errors"] == 0
    assert report["hits"]["semantic"] == 1  # close -> base
    assert report["hits"]["exact"] == (3 if mode == "--dry-run" else 1)  # the repeated zero one, by its text
    if mode == "live":
        assert "unusable vector (all zeros, or not finite)" in result.stderr
        by_query = {e.query: e.dims for e in stored(isolated_env)}
        assert by_query == {"base": 384, "zero one": None, "zero two": None}  # never stored with a vector


# -- dry run and simulate ------------------------------------------------------------------

@pytest.fixture
def warm(ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> Path:
    ollama.table.update({"stored one": at_angle(1.0), "near one": at_angle(0.9), "far one": at_angle(0.5)})
    path = write(tmp_path / "warm.txt", ["stored one"])
    assert run_cli("replay", str(path), *MINILM).exit_code == 0
    neutral_scale(isolated_env)
    ollama.reset()
    return isolated_env


def test_dry_run_reports_and_changes_nothing(warm: Path, ollama: FakeOllama, tmp_path: Path) -> None:
    before = digest(warm)
    path = write(tmp_path / "q.txt", ["Stored one?", "near one", "far one"])
    out = tmp_path / "rows.jsonl"
    result = run_cli("replay", str(path), "--dry-run", "--json", "--out", str(out), *MINILM)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["reports"][0]
    assert report["hits"] == {"exact": 1, "semantic": 1, "total": 2} and report["misses"] == {"no_match": 1}
    assert report["model_calls"] == 0 and ollama.generations == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["source"], r["matched"]) for r in rows] == [(1, "exact", 1), (2, "semantic", 1), (3, "miss", None)]
    assert rows[1]["similarity"] == pytest.approx(0.9, abs=1e-5)
    assert digest(warm) == before  # byte for byte: no hit counted, no log row


def test_simulate_never_touches_the_cache_or_the_model(warm: Path, ollama: FakeOllama, tmp_path: Path) -> None:
    before = digest(warm)
    b1 = np.zeros(384)
    b1[3] = 1.0
    ollama.table.update({"a2": at_angle(0.97), "b1": b1, "b2": at_angle(0.86, 5)})
    # b2 is 0.86 from "stored one" in the user's cache, but simulate starts empty
    path = write(tmp_path / "q.jsonl", [{"query": "stored one", "label": "a"}, {"query": "a2", "label": "a"},
                                        {"query": "b1", "label": "b"}, {"query": "B1", "label": "b"},
                                        {"query": "b2", "label": "b"}])
    out = tmp_path / "rows.jsonl"
    result = run_cli("replay", str(path), "--simulate", "--thresholds", "0.85,0.9,0.99", "--json", "--out", str(out),
                     "--guards", "none", *MINILM, *COSINE)  # the made-up texts differ in digits
    assert result.exit_code == 0, result.stderr
    reports = {r["threshold"]: r for r in json.loads(result.stdout)["reports"]}
    assert reports[0.85]["hits"] == {"exact": 1, "semantic": 2, "total": 3}  # a2→a, B1→b1 (exact), b2→"stored one"
    assert (reports[0.85]["correct_hits"], reports[0.85]["wrong_hits"]) == (2, 1)
    assert reports[0.9]["hits"] == {"exact": 1, "semantic": 1, "total": 2} and reports[0.9]["wrong_hits"] == 0
    assert reports[0.99]["hits"]["semantic"] == 0
    assert all(r["model_calls"] == 0 for r in reports.values())
    assert ollama.generations == 0 and digest(warm) == before
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 15 and {r["threshold"] for r in rows} == {0.85, 0.9, 0.99}
    wrong = next(r for r in rows if r["threshold"] == 0.85 and r["query"] == "b2")
    assert (wrong["source"], wrong["matched"], wrong["matched_label"]) == ("semantic", 1, "a")


def test_target_error_recommends_the_threshold(ollama: FakeOllama, tmp_path: Path) -> None:
    ollama.table.update({"a1": at_angle(1.0), "a2": at_angle(0.97), "b1": at_angle(0.88)})
    path = write(tmp_path / "q.jsonl", [{"query": "a1", "label": "a"}, {"query": "a2", "label": "a"},
                                        {"query": "b1", "label": "b"}])
    result = run_cli("replay", str(path), "--simulate", "--thresholds", "0.80:0.95:0.05", "--target-error", "0.01",
                     "--guards", "none", *MINILM, *COSINE)
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["threshold", "hit", "rate", "exact", "semantic", "wrong-answer", "rate", "precision"]
    assert lines[2].split()[:2] == ["0.80", "66.7%"] and lines[3].split()[:2] == ["0.85", "66.7%"]
    assert lines[4].startswith("     0.90     33.3%") and "recommended" not in lines[4]
    # 0.95 keeps the same hits: on a tie the higher, safer threshold is recommended
    assert lines[5].startswith("     0.95     33.3%") and lines[5].endswith("← recommended (wrong answers ≤ 1.00%)")
    assert json.loads(run_cli("replay", str(path), "--simulate", "--thresholds", "0.8,0.9", "--target-error", "0.01",
                              "--json", "--guards", "none", *MINILM, *COSINE).stdout)["recommended_threshold"] == 0.9


def test_simulate_applies_the_guards_as_ask_does(ollama: FakeOllama, tmp_path: Path) -> None:
    ollama.table.update({"how do I enable 2FA": at_angle(1.0), "how do I disable 2FA": at_angle(0.96),
                         "how can I enable 2FA": at_angle(0.95)})
    path = write(tmp_path / "q.jsonl", [{"query": "how do I enable 2FA", "label": "on"},
                                        {"query": "how do I disable 2FA", "label": "off"},
                                        {"query": "how can I enable 2FA", "label": "on"}])
    plain = json.loads(run_cli("replay", str(path), "--simulate", "--json", "--guards", "none", *MINILM,
                               *COSINE).stdout)
    assert plain["reports"][0]["wrong_hits"] == 1  # disable served enable's answer
    guarded = json.loads(run_cli("replay", str(path), "--simulate", "--json", *MINILM, *COSINE).stdout)["reports"][0]
    assert guarded["misses"] == {"no_match": 1, "guard:negation": 1}
    # "how can I enable" is nearest to the stored "disable" (0.96 x 0.95 + ...), which the
    # guard rejects; ask then takes the next candidate, the stored "enable": a correct hit
    assert (guarded["correct_hits"], guarded["wrong_hits"]) == (1, 0)


def test_out_rows_say_which_words_a_guard_fired_on(ollama: FakeOllama, tmp_path: Path) -> None:
    ollama.table.update({"how do I enable 2FA": at_angle(1.0), "how do I disable 2FA": at_angle(0.96)})
    path = write(tmp_path / "q.txt", ["how do I enable 2FA", "how do I disable 2FA"])
    for mode in ("simulate", "live"):  # the throw-away cache's rows, and a real cache's
        out = tmp_path / f"rows-{mode}.jsonl"
        flags = ("--simulate",) if mode == "simulate" else ("--jobs", "1")  # in order
        assert run_cli("replay", str(path), *flags, "--out", str(out), *MINILM, *COSINE).exit_code == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(r["miss_reason"], r["miss_detail"]) for r in rows][1] == ("guard:negation", '"disable" vs "enable"')


def test_shuffle_fixes_an_order(ollama: FakeOllama, tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", [f"shuffled {n}x{n}" for n in range(20)])
    out1, out2 = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    run_cli("replay", str(path), "--simulate", "--shuffle", "7", "--out", str(out1))
    run_cli("replay", str(path), "--simulate", "--shuffle", "7", "--out", str(out2))
    order = [json.loads(line)["line"] for line in out1.read_text().splitlines()]
    assert order == [json.loads(line)["line"] for line in out2.read_text().splitlines()]
    assert order == [int(i) + 1 for i in np.random.default_rng(7).permutation(20)]


def test_from_log_replays_real_traffic(ollama: FakeOllama, isolated_env: Path) -> None:
    calibrated(isolated_env)
    for question in ("logged one", "logged two", "logged one"):
        run_cli("ask", "-q", question)
    result = run_cli("replay", "--from-log", "--dry-run", "--json")
    report = json.loads(result.stdout)["reports"][0]
    assert report["queries"] == 3 and report["hits"]["exact"] == 3
    with cache_at(isolated_env) as store:  # and two asked two hours ago
        for question in ("earlier one", "earlier two"):
            store.log_request(LogRow(at=time.time() - 7200, path="model", query=question, namespace="default"))
    everything = json.loads(run_cli("replay", "--from-log", "--dry-run", "--json").stdout)["reports"][0]
    assert everything["queries"] == 5 and everything["misses"] == {"no_match": 2}
    recent = json.loads(run_cli("replay", "--from-log", "--since", "1h", "--dry-run", "--json").stdout)["reports"][0]
    assert recent["queries"] == 3


# -- the baseline of ../shared/data/README.md ----------------------------------------------

BASELINE = {0.80: (53.7, 1.54), 0.85: (43.0, 0.68), 0.90: (30.1, 0.27), 0.95: (14.0, 0.08)}


@pytest.mark.slow  # 22,500 CLINC queries simulated at four thresholds
@pytest.mark.skipif(not (SHARED_DATA / "clinc150.jsonl").exists(), reason="shared/data not present")
def test_simulate_reproduces_the_clinc_baseline(ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> None:
    rows, table = load_clinc_table(str(SHARED_DATA))
    ollama.table.update(table)
    path = write(tmp_path / "inscope.jsonl", [r for r in rows if r["label"] != "oos"])
    result = run_cli("replay", str(path), "--simulate", "--shuffle", "0", "--thresholds", "0.80,0.85,0.90,0.95",
                     "--json", "--guards", "none", *MINILM, *COSINE)  # the baseline is a plain cosine threshold
    assert result.exit_code == 0, result.stderr
    for report in json.loads(result.stdout)["reports"]:
        hit_rate, wrong_rate = BASELINE[report["threshold"]]
        assert report["queries"] == 22_500
        assert report["hit_rate"] * 100 == pytest.approx(hit_rate, abs=0.2)
        assert report["wrong_answer_rate"] * 100 == pytest.approx(wrong_rate, abs=0.2)
    assert ollama.generations == 0 and not isolated_env.exists()


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")


@needs_proc
def test_ctrl_c_stops_cleanly_keeping_what_was_stored(ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> None:
    proc = _slow_replay(ollama, tmp_path, isolated_env)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert err.decode() == ""
    assert out.decode().startswith("replay (live, interrupted): ")
    assert 2 <= len(_all_complete(isolated_env)) < 40
    assert all(claim_free(isolated_env, f"slow replay {n}x{n}") for n in range(40))
    assert _gone(proc.pid)


def _slow_replay(ollama: FakeOllama, tmp_path: Path, isolated_env: Path) -> subprocess.Popen[bytes]:
    """A live replay of 40 questions in a process group of its own, each answer streaming
    for about 0.4 s, once it has stored two answers."""
    path = write(tmp_path / "q.txt", [f"slow replay {n}x{n}" for n in range(40)])
    ollama.faults.chunk_delay = 0.05
    proc = subprocess.Popen([sys.executable, "-m", "semcache_cli", "replay", str(path), "-j", "2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=os.environ.copy(), cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _stored_count(isolated_env) < 2:
        time.sleep(0.05)
    return proc


def _stored_count(db: Path) -> int:
    """Polled while the replay runs, read off the file: opening the store would create
    or migrate it beside the replay."""
    if not db.exists():  # not created here: sqlite3 would make it with the test's umask
        return 0
    try:
        return db_rows(db, "SELECT count(*) FROM entries")[0][0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def _group(pgid: int) -> dict[int, int]:
    """Live (not zombie) processes of a process group: pid -> parent pid."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members[int(stat.parent.name)] = int(fields[1])
    return members


def _all_complete(db: Path) -> list[Entry]:
    entries = stored(db)
    assert all(entry.response == f"This is the answer to: {entry.query}" for entry in entries)  # none partial
    return entries


def _gone(pgid: int, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _group(pgid)


@needs_proc
def test_sigterm_to_the_whole_group_ends_every_worker_cleanly(ollama: FakeOllama, tmp_path: Path,
                                                              isolated_env: Path) -> None:
    proc = _slow_replay(ollama, tmp_path, isolated_env)
    assert len(_group(proc.pid)) >= 3  # the replay, its fork server and workers
    os.killpg(proc.pid, signal.SIGTERM)  # as a supervisor stopping a service does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert err.decode() == "semcache: error: terminated; nothing partial was stored\n"
    assert 2 <= len(_all_complete(isolated_env)) < 40
    assert all(claim_free(isolated_env, f"slow replay {n}x{n}") for n in range(40))  # released, not left to expire
    assert _gone(proc.pid)


@needs_proc
def test_a_worker_killed_outright_is_a_one_line_error(ollama: FakeOllama, tmp_path: Path,
                                                      isolated_env: Path) -> None:
    proc = _slow_replay(ollama, tmp_path, isolated_env)
    members = _group(proc.pid)
    workers = [pid for pid, parent in members.items() if parent not in (proc.pid, 1) and pid != proc.pid]
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.decode().strip().splitlines() == [
        "semcache: error: a replay worker process ended unexpectedly; answers stored so far are kept"]
    assert len(_all_complete(isolated_env)) >= 2
    assert _gone(proc.pid)


@needs_proc
def test_workers_do_not_outlive_a_replay_killed_outright(ollama: FakeOllama, tmp_path: Path,
                                                         isolated_env: Path) -> None:
    proc = _slow_replay(ollama, tmp_path, isolated_env)
    proc.kill()
    proc.communicate(timeout=60)
    assert _gone(proc.pid)
    _all_complete(isolated_env)


def test_a_missing_model_stops_the_replay_with_its_exit_code(ollama: FakeOllama, tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", ["one", "two", "three"])
    result = run_proc("replay", str(path), "--model", "llama9", "-j", "2")
    assert result.exit_code == 5, result.stderr
    assert result.stderr.count("\n") == 1 and "ollama pull llama9" in result.stderr


def test_a_single_query_is_reported_in_the_singular(ollama: FakeOllama, tmp_path: Path) -> None:
    result = run_cli("replay", str(write(tmp_path / "q.txt", ["only one"])))
    assert result.exit_code == 0 and result.stdout.startswith("replay (live): 1 query in ")


def test_piped_runs_draw_no_progress(ollama: FakeOllama, tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", ["quiet one", "quiet two"])
    result = run_proc("replay", str(path))
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("replay (live): 2 queries in ")


def test_a_terminal_gets_a_progress_bar_with_queries_per_second(ollama: FakeOllama, tmp_path: Path) -> None:
    from conftest import run_in_terminal

    path = write(tmp_path / "q.txt", [f"progress {n}x{n}" for n in range(6)])
    ollama.faults.chunk_delay = 0.05  # a run of about two seconds
    code, text = run_in_terminal("replay", str(path), "-j", "1")
    assert code == 0
    assert "replaying" in text and "queries/s" in text
    assert "replay (live): 6 queries in " in text
