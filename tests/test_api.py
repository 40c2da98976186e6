"""The Python API (semcache_cli.api): its documented examples run as written, its
answers are `ask --json`'s, its errors carry no CLI flag, threads share one Cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, in_threads, run_cli, stored
from fake_ollama import FakeOllama

from semcache_cli.api import Answer, Cache
from semcache_cli.errors import CacheOnlyMiss, OllamaUnreachable, StoreError, UsageError

DOC = REPO / "docs" / "python-api.md"
DOC_HOST = "http://127.0.0.1:11434"


def doc_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(doc_examples())))
def test_documented_example_runs(index: int, ollama: FakeOllama, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # "answers.db" lands here
    code = doc_examples()[index].replace(DOC_HOST, ollama.url)
    exec(compile(code, f"{DOC.name}[{index}]", "exec"), {"__name__": "__doc_example__"})


def test_docs_have_examples() -> None:
    assert len(doc_examples()) >= 5


def test_answer_has_the_fields_of_ask_json(ollama: FakeOllama, tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    with Cache(db, ollama_host=ollama.url) as cache:
        answer = cache.ask("What is the capital of France?")
    cli = run_cli("ask", "What is the capital of France?", "--json", "--db", str(db))
    assert cli.exit_code == 0, cli.stderr
    printed = json.loads(cli.stdout)
    assert set(answer.as_dict()) == set(printed) - {"question", "exit_code", "error"}  # the CLI's envelope
    assert (answer.source, printed["source"]) == ("model", "exact")
    assert printed["entry_id"] == answer.entry_id and printed["response"] == answer.response
    assert isinstance(answer, Answer) and answer.hit is False and answer.stored is True


def test_reads_no_environment(ollama: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SEMCACHE_* and OLLAMA_HOST are ignored: only from_environment reads them."""
    monkeypatch.setenv("SEMCACHE_NAMESPACE", "from-env")
    monkeypatch.setenv("SEMCACHE_THRESHOLD", "not a number")  # would fail if it were read
    with Cache(tmp_path / "a.db", ollama_host=ollama.url) as cache:
        assert cache.ask("hello there").namespace == "default"
    with pytest.raises(UsageError, match="SEMCACHE_THRESHOLD"):
        Cache.from_environment(db=str(tmp_path / "a.db"))
    monkeypatch.delenv("SEMCACHE_THRESHOLD")
    # OLLAMA_HOST points at the server; the explicit Cache does not read it
    with Cache(tmp_path / "b.db") as cache, pytest.raises(OllamaUnreachable, match="127.0.0.1:11434"):
        cache.ask("hello there")


@pytest.mark.parametrize("db, message", [
    ("sqlite://x", "sqlite:// is not a kind of store"),
    ("missing-dir/x.db", "database directory missing-dir does not exist"),
])
def test_store_errors_name_no_flag(db: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as caught:
        Cache(db)
    assert message in str(caught.value) and "--" not in str(caught.value)
    assert caught.value.setting == "db"
    cli = run_cli("ask", "q", "--db", db)  # the CLI adds its flag where it maps the error to an exit code
    assert cli.exit_code == 2 and message in cli.stderr and "(--db)" in cli.stderr


def test_cache_only_miss_names_no_flag(ollama: FakeOllama, tmp_path: Path) -> None:
    with Cache(tmp_path / "a.db", ollama_host=ollama.url) as cache, pytest.raises(CacheOnlyMiss) as caught:
        cache.ask("never asked", cache_only=True)
    assert "--" not in str(caught.value)
    assert ollama.generations == 0


def test_bad_file_is_a_store_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database") as caught:
        Cache(bad)
    assert "--db" not in str(caught.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"ttl": "soon"}, "ttl: 'soon' is not a duration"),
    ({"options": {"temprature": 0}}, "unknown option 'temprature'"),
    ({"guards": "nonsense"}, "unknown guard"),
    ({"ollama_host": "ftp://x"}, "unsupported scheme"),
])
def test_bad_arguments(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=message):
        Cache(tmp_path / "a.db", **kwargs)
    assert not (tmp_path / "a.db").exists()


def test_bad_questions(ollama: FakeOllama, tmp_path: Path) -> None:
    with Cache(tmp_path / "a.db", ollama_host=ollama.url) as cache:
        for question, message in (("  ", "empty"), ("a\x00b", "NUL"), (42, "expected a string")):
            with pytest.raises(UsageError, match=message):
                cache.ask(question)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="format"):
            cache.ask("fine", format="yaml")
    assert ollama.generations == 0
    with pytest.raises(UsageError, match="closed"):
        cache.ask("after close")


def test_ttl_none_is_never(ollama: FakeOllama, tmp_path: Path) -> None:
    with Cache(tmp_path / "a.db", ollama_host=ollama.url, ttl=None) as cache:
        assert cache.ask("a question kept forever").expires_at is None
    assert stored(tmp_path / "a.db")[0].ttl is None


def test_threads_share_one_cache(ollama: FakeOllama, tmp_path: Path) -> None:
    """16 threads, 4 questions, all at once: each question reaches the model once."""
    ollama.faults.delay = 0.2  # the holders are still generating when the others look
    sources: list[str] = []
    with Cache(tmp_path / "a.db", ollama_host=ollama.url) as cache:
        errors = in_threads(lambda n: sources.append(cache.ask(f"question number {n % 4}").source), 16)
    assert not errors
    assert ollama.generations == 4 and sorted(sources).count("model") == 4 and len(sources) == 16
    assert len(stored(tmp_path / "a.db")) == 4


def test_api_is_not_on_the_ask_path() -> None:
    """`semcache ask` never imports the API module (its start-up cost is unchanged)."""
    code = "import sys, semcache_cli.cli; print('semcache_cli.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_py_typed_is_shipped() -> None:
    assert (REPO / "semcache_cli" / "py.typed").exists()
    assert re.search(r'^semcache_cli = \[.*"py.typed".*\]', (REPO / "pyproject.toml").read_text(), re.M)
