"""`semcache copy`: a cache moved between a SQLite file and a shared PostgreSQL store,
either way, on real stores; idempotent; a progress bar on a terminal only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import calibrated, restore, run_cli, run_in_terminal, stored
from fake_ollama import FakeOllama

QUESTIONS = ["How do I reset my password?", "What is semantic caching?", "Why is the sky blue?"]


def copy(source: str | Path, target: str | Path, *args: str) -> dict:
    result = run_cli("copy", "--from", str(source), "--to", str(target), "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def timeless(db: str | Path) -> list[tuple]:
    """Every entry, as the user sees it, without the ids a store gives."""
    return sorted(entry._replace(id=0) for entry in stored(db))


@pytest.fixture
def local(ollama: FakeOllama, isolated_env: Path) -> Path:
    for question in QUESTIONS:
        assert run_cli("ask", "-q", question).exit_code == 0
    assert run_cli("ask", "-q", QUESTIONS[0]).exit_code == 0  # a hit, which travels with its entry
    assert run_cli("ask", "-q", "-n", "team", "--embed-model", "all-minilm", QUESTIONS[1]).exit_code == 0
    return isolated_env


def test_sqlite_to_postgres_and_back_again(local: Path, postgres_db: str, tmp_path: Path, ollama: FakeOllama,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    report = copy(local, postgres_db)
    assert (report["read"], report["written"], report["unchanged"]) == (4, 4, 0)
    assert report["source"] == str(local) and report["target"] == postgres_db
    assert timeless(postgres_db) == timeless(local)
    monkeypatch.setenv("SEMCACHE_DB", postgres_db)  # the team now asks the shared store
    calibrated(postgres_db)  # as a store with enough questions for semantic hits has
    generations = ollama.generations
    assert "exact hit" in run_cli("ask", QUESTIONS[2]).stderr
    assert "semantic hit" in run_cli("ask", "how do I reset my password please").stderr  # vectors came along
    assert ollama.generations == generations
    again = copy(local, postgres_db)
    assert (again["written"], again["unchanged"]) == (0, 4)  # nothing added twice
    assert len(stored(postgres_db)) == 4
    back = tmp_path / "restored.db"
    assert copy(postgres_db, back)["written"] == 4
    assert timeless(back) == timeless(postgres_db)


def test_a_newer_answer_replaces_an_older_one_and_not_the_other_way(local: Path, tmp_path: Path) -> None:
    target = tmp_path / "target.db"
    copy(local, target)
    entries = {e.query: e for e in stored(local) if e.namespace == "default"}
    restore(local, entries[QUESTIONS[1]], response="a newer answer", created_at=entries[QUESTIONS[1]].created_at + 60)
    theirs = {e.query: e for e in stored(target) if e.namespace == "default"}
    restore(target, theirs[QUESTIONS[2]], response="the target's newer answer",
            created_at=theirs[QUESTIONS[2]].created_at + 60)
    report = copy(local, target)
    assert (report["written"], report["unchanged"]) == (1, 3)
    answers = {e.query: e.response for e in stored(target) if e.namespace == "default"}
    assert answers[QUESTIONS[1]] == "a newer answer"
    assert answers[QUESTIONS[2]] == "the target's newer answer"


def test_a_missing_source_or_the_same_store_is_a_usage_error(local: Path, tmp_path: Path) -> None:
    missing = run_cli("copy", "--from", str(tmp_path / "typo.db"), "--to", str(tmp_path / "new.db"))
    assert missing.exit_code == 2 and missing.stderr == f"semcache: error: there is no cache at {tmp_path / 'typo.db'} " \
                                                        "(check the path)\n"
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "new.db").exists()
    same = run_cli("copy", "--from", str(local), "--to", f"{local.parent}/./{local.name}")
    assert same.exit_code == 2 and "same store" in same.stderr


def test_a_terminal_sees_progress_and_a_pipe_only_the_report(local: Path, tmp_path: Path) -> None:
    code, text = run_in_terminal("copy", "--from", str(local), "--to", str(tmp_path / "t.db"))
    assert code == 0 and "entries/s" in text
    assert text.strip().splitlines()[-1].startswith(f"semcache: copied 4 entries from {local} to ")
    piped = run_cli("copy", "--from", str(local), "--to", str(tmp_path / "t.db"))
    assert piped.stderr == f"semcache: copied 0 entries from {local} to {tmp_path / 't.db'} (4 already there)\n"
    assert run_cli("copy", "--from", str(local), "--to", str(tmp_path / "t.db"), "-q").stderr == ""
