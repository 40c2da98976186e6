"""Stores keyed by the exact key before issue 22 (NFKC, every trailing punctuation mark,
all whitespace collapsed) are migrated on both backends: each entry gets the key of its
own stored question, so it is still found by that question, and no longer by the other
questions the old key merged with it.

tests/data/old_exact_keys.json holds the entries the previous build's own CLI left in a
cache (its `made_by` names the commit and `asks` the questions asked, in order); each
test loads them into a store of the schema before the migration, made by this build's
migrations stopped before it."""

from __future__ import annotations

import json
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, stored
from fake_ollama import FakeOllama

from semcache_cli import policy

FIXTURE = json.loads((Path(__file__).parent / "data" / "old_exact_keys.json").read_text())


def previous_sqlite(path: Path, rows: list[dict[str, Any]]) -> None:
    from sqlite_utils import Database

    from semcache_cli.storage import sqlite_schema

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=16384")
    conn.execute("PRAGMA journal_mode=WAL")
    migrations = sqlite_schema.migration_set()
    names = [m.name for m in migrations.pending(Database(conn, execute_plugins=False))]
    step = next(name for name in names if name.endswith("_exact_keys"))
    migrations.apply(Database(conn, execute_plugins=False), stop_before=step)
    conn.execute(f"PRAGMA user_version={names.index(step)}")
    for row in rows:
        conn.execute(f"INSERT INTO entries ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    conn.close()


def previous_postgres(url: str, rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from semcache_cli.storage import postgres

    step = next(i for i, m in enumerate(postgres._MIGRATIONS) if m.__name__.endswith("_exact_keys"))
    with monkeypatch.context() as patch:
        patch.setattr(postgres, "_MIGRATIONS", postgres._MIGRATIONS[:step])
        patch.setattr(postgres, "SCHEMA_VERSION", step)
        postgres.PostgresStore.open(url, timeout_s=30).close()
    conninfo, schema, _ = postgres.parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for row in rows:
            conn.execute(f'INSERT INTO "{schema}".entries ({", ".join(row)}) VALUES ({", ".join("%s" for _ in row)})',
                         list(row.values()))
        conn.execute(f"SELECT setval(pg_get_serial_sequence('\"{schema}\".entries', 'id'), "
                     f'(SELECT max(id) FROM "{schema}".entries))')


@pytest.fixture(params=["sqlite", "postgres"])
def previous(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             ollama: FakeOllama) -> Iterator[Any]:
    """A function that makes a store of the schema before the migration holding `rows`,
    the CLI's database; returns where it is."""
    def make(rows: list[dict[str, Any]]) -> str:
        if request.param == "postgres":
            url = request.getfixturevalue("postgres_db")
            previous_postgres(url, rows, monkeypatch)
        else:
            url = str(tmp_path / "old.db")
            previous_sqlite(Path(url), rows)
        monkeypatch.setenv("SEMCACHE_DB", url)
        return url

    yield make


def ask(question: str) -> dict[str, Any]:
    # The exact layer alone: a near neighbour served by the semantic layer (on from the
    # first entry) is not what these tests are about.
    result = run_cli("ask", "--json", "--threshold", "1", "-", input=question)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def fresh(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as if stored a minute ago, so they have not expired by the time a test runs."""
    now = time.time()
    return [{**row, "created_at": now - 60 + i, "expires_at": now - 60 + i + row["ttl"]} for i, row in enumerate(rows)]


def test_entries_of_the_previous_build_are_found_by_their_own_question_only(previous: Any,
                                                                            ollama: FakeOllama) -> None:
    db = previous(fresh(FIXTURE["entries"]))
    by_id = {row["id"]: row for row in FIXTURE["entries"]}
    own = {  # each entry's own question (the stored text, or as its asker typed it)
        1: ["How do I reset my password?", "how do I reset my password"],
        2: ["What is C?"], 3: ["What is 2³?"],
        4: ["What is C++?"],  # its key changes: `?` after a symbol is kept now
        5: ["Fix this:\ndef f():\n    return 1\n"],
        6: ["What is F#?"],  # stored over "What is F?"'s expired entry: its answer is F#'s
        7: ["ＨＥＬＬＯ"],  # its key changes: NFKC no more
        8: [unicodedata.normalize("NFC", by_id[8]["query"]), by_id[8]["query"]],  # stored in NFD
    }
    for entry_id, questions in own.items():
        for question in questions:
            hit = ask(question)
            assert (hit["source"], hit["entry_id"]) == ("exact", entry_id), question
            assert hit["response"] == by_id[entry_id]["response"]
    assert ollama.generations == 0
    # What the old key merged with another question is that question's own now.
    merged = ["What is C#?", "What is 23?", "Fix this:\ndef f():\n  return 1\n", "What is F?", "HELLO",
              "What is C++"]
    answered = 0
    for question in merged:
        miss = ask(question)
        assert miss["source"] != "exact", question  # the old key merged it with another question; this one does not
        if miss["source"] == "model":  # else an identical vector (same words, another symbol) at similarity 1
            assert miss["response"] == f"This is the answer to: {question.strip()}"
            answered += 1
    assert answered >= len(merged) - 1 and ollama.generations == answered
    assert len(stored(db)) == len(FIXTURE["entries"]) + answered


def test_edited_keys_are_made_again_and_a_question_stored_twice_keeps_its_newest_answer(previous: Any,
                                                                                         ollama: FakeOllama) -> None:
    now = time.time()
    base = {"namespace": "default", "model": "llama3.2:latest", "options": "{}", "ttl": None, "expires_at": None,
            "hits": 0, "scope": policy.Scope("default", "llama3.2").hash}

    def row(entry_id: int, query: str, key: str, age: float) -> dict[str, Any]:
        return {**base, "id": entry_id, "query": query, "exact_key": key, "response": f"answer {entry_id}",
                "created_at": now - age}

    db = previous([
        row(1, "What is X?", policy.exact_key("What is X?"), 100),  # keeps its key...
        row(2, "what is x", "ab" * 16, 50),  # ...which this newer one, hand-edited, moves to: it wins
        row(3, "Swap one", policy.exact_key("Swap two"), 10),  # two keys swapped: each moves to the other's
        row(4, "Swap two", policy.exact_key("Swap one"), 10),
        row(5, "Dup", "cd" * 16, 10),  # both move to one key: the newer stays
        row(6, "DUP?", "ef" * 16, 20),
    ])
    for question, entry_id in [("What is X?", 2), ("Swap one", 3), ("Swap two", 4), ("dup", 5)]:
        hit = ask(question)
        assert (hit["source"], hit["entry_id"], hit["response"]) == ("exact", entry_id, f"answer {entry_id}")
    assert [entry.id for entry in stored(db)] == [2, 3, 4, 5]
    assert ollama.generations == 0
