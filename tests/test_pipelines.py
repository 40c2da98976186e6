"""Scripts, pipelines and cron: whole answers from parallel processes sharing one pipe,
tab-separated output that is never cut, quiet success, usage errors in the one error
style, each command's own exit codes, and the SQLite write-ahead log left as it should
be. Every test runs semcache as a real process."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cache_at, run_proc, stored
from fake_ollama import FakeOllama

from semcache_cli import policy
from semcache_cli.storage.models import NewEntry

README = REPO / "README.md"


def semcache_argv() -> list[str]:
    return [sys.executable, "-m", "semcache_cli"]


# -- 1. parallel asks into one pipe ------------------------------------------------------

def _xargs_ask(questions: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """`xargs -0 -P 8 -n 1 semcache ask -q`, every process writing to the one pipe that
    the test reads."""
    return subprocess.run(
        ["xargs", "-0", "-P", "8", "-n", "1", *semcache_argv(), "ask", "-q"],
        input=b"\0".join(q.encode() for q in questions), capture_output=True, env=env, cwd=REPO, timeout=300,
    )


@pytest.mark.skipif(shutil.which("xargs") is None, reason="needs xargs")
def test_parallel_asks_into_one_pipe_never_interleave(ollama: FakeOllama, isolated_env: Path) -> None:
    questions = [f"What is fact number {n} about the sea?" for n in range(40)]
    answers = {}
    for n, question in enumerate(questions):
        # One line of ~3 KB in many streamed tokens: under PIPE_BUF, so one write stays whole.
        answers[question] = f"answer {n}: " + " ".join(f"word{n}x{i}" for i in range(300))
        ollama.replies[question] = answers[question]
    env = {**os.environ, "OLLAMA_HOST": ollama.url}
    for round_ in ("misses", "hits"):
        result = _xargs_ask(questions, env)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stderr == b"", round_  # -q: no status lines
        lines = result.stdout.decode().split("\n")
        assert lines[-1] == "", round_  # ends with a newline
        assert sorted(lines[:-1]) == sorted(answers.values()), round_  # 40 whole answers, one a line
    assert ollama.counts["/api/chat"] == 40  # the second round was all hits
    assert len(stored(isolated_env)) == 40


def test_a_miss_into_a_pipe_is_written_whole_with_its_newline(ollama: FakeOllama) -> None:
    """Off a terminal the streamed answer is kept and written in one write: strace-free
    proof is the output itself, and the answer a hit gives is byte for byte the same."""
    question = "Tell me a long story"
    ollama.replies[question] = "line one\nline two\n\nend"
    miss = run_proc("ask", question)
    hit = run_proc("ask", question)
    assert miss.stdout == hit.stdout == "line one\nline two\n\nend\n"


# -- 2. tab-separated output is never cut --------------------------------------------------

def unescape_tsv(field: str) -> str:
    """The reverse of the documented escaping: \\\\ \\t \\n \\r."""
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[m.group(1)], field)


def _seed(db: Path, query: str, response: str, created_at: float | None = None) -> None:
    with cache_at(db) as store:
        store.store_answer(NewEntry(
            scope=policy.Scope("default", "llama3.2").hash, exact_key=policy.exact_key(query), namespace="default",
            model="llama3.2:latest", system=None, options={}, format=None, query=query, response=response,
            created_at=created_at or time.time(), ttl=None, done_reason="stop",
        ))


def test_piped_inspect_keeps_every_character_and_can_be_read_back(ollama: FakeOllama, isolated_env: Path) -> None:
    query = "Why does a\ttab, a back\\slash and a line\nbreak survive? " + "long " * 100
    response = "Because they are escaped:\n\t\\t and \\n stay apart\r\nfrom real ones. " + "x" * 500
    _seed(isolated_env, query, response)
    result = run_proc("inspect")
    assert result.exit_code == 0 and result.stderr == ""
    header, row, end = result.stdout.split("\n")
    assert end == "" and header.split("\t")[-2:] == ["query", "response"]
    fields = row.split("\t")
    assert len(fields) == 8
    assert (unescape_tsv(fields[6]), unescape_tsv(fields[7])) == (query, response)
    similar = run_proc("inspect", "--similar", query)
    assert similar.exit_code == 0, similar.stderr
    exact = similar.stdout.split("\n")[1].split("\t")
    assert exact[1] == "exact" and unescape_tsv(exact[-1]) == query


# -- 4. quiet success ----------------------------------------------------------------------

def _cron_line() -> list[str]:
    """The command of the README's crontab line."""
    text = README.read_text()
    line = re.search(r"```cron\n(.*?)\n```", text, re.S).group(1)  # type: ignore[union-attr]
    command = line.split(None, 5)[5]
    assert command.startswith("semcache ")
    return command.split()[1:]


def test_the_readmes_crontab_line_prints_nothing(isolated_env: Path) -> None:
    _seed(isolated_env, "an old question", "an old answer", created_at=time.time() - 100 * 86400)
    result = run_proc(*_cron_line())  # no terminal, stdin /dev/null: as cron runs it
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("args", [
    ["purge", "--expired"],
    ["purge", "--all", "--yes"],
    ["stats"],
    ["inspect"],
    ["inspect", "1"],
    ["copy", "--from", "{db}", "--to", "{tmp}/copy.db"],
])
def test_quiet_is_silent_on_success(isolated_env: Path, args: list[str]) -> None:
    _seed(isolated_env, "a question", "an answer")
    args = [a.format(db=isolated_env, tmp=isolated_env.parent) for a in args]
    loud = run_proc(*args) if args[0] != "purge" else None
    if loud is not None:
        assert loud.exit_code == 0 and loud.stdout + loud.stderr != ""  # there is something to silence
    quiet = run_proc(*args, "-q")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")


def test_quiet_replay_prints_nothing_but_asked_for_json(ollama: FakeOllama, isolated_env: Path) -> None:
    queries = isolated_env.parent / "queries.txt"
    queries.write_text("first question\nsecond question\n")
    quiet = run_proc("replay", str(queries), "-q")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")
    as_json = run_proc("replay", str(queries), "-q", "--json")
    assert as_json.exit_code == 0 and as_json.stderr == ""
    assert json.loads(as_json.stdout)["reports"][0]["hits"]["exact"] == 2


def test_quiet_still_prints_json_and_errors(isolated_env: Path, tmp_path: Path) -> None:
    _seed(isolated_env, "a question", "an answer")
    purged = run_proc("purge", "--expired", "-q", "--json")
    assert purged.exit_code == 0 and purged.stderr == "" and json.loads(purged.stdout)["deleted"] == 0
    assert json.loads(run_proc("stats", "-q", "--json").stdout)["entries"]["total"] == 1
    missing = run_proc("inspect", "-q", "99")
    assert missing.exit_code == 2 and missing.stdout == ""
    assert missing.stderr.startswith("semcache: error: no entry 99") and len(missing.stderr.splitlines()) == 1
    broken = tmp_path / "broken.db"
    broken.write_text("not a database\n" * 20)
    failed = run_proc("stats", "-q", "--db", str(broken))  # a health check: silent only when healthy
    assert failed.exit_code == 1 and failed.stderr.startswith("semcache: error:")
    assert run_proc("purge", "-q").exit_code == 2  # no selector: still an error, still said


# -- 5. the write-ahead log ----------------------------------------------------------------

def wal(db: Path) -> bytes | None:
    path = Path(f"{db}-wal")
    return path.read_bytes() if path.exists() else None


def test_a_long_live_replay_leaves_no_write_ahead_log(ollama: FakeOllama, isolated_env: Path) -> None:
    # Answers streaming longer than a lease renewal (3 s) fill the WAL from connections
    # that are never closed by a checkpoint on close: the replay's own checkpoint at its
    # end truncates it.
    ollama.faults.chunk_delay = 0.1
    queries = [f"long question {n}" for n in range(4)]
    for question in queries:
        ollama.replies[question] = ("y" * 499 + " ") * 40
    path = isolated_env.parent / "long.txt"
    path.write_text("\n".join(queries) + "\n")
    result = run_proc("replay", str(path), "-j", "4", "-q", timeout=120)
    assert result.exit_code == 0, result.stderr
    assert len(stored(isolated_env)) == 4
    assert not wal(isolated_env)  # absent or empty; it was ~900 KB before the checkpoint


def _hold_wal(db: Path) -> sqlite3.Connection:
    """Another process's view: a connection that wrote and keeps the database open, so
    its writes sit in the WAL."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO requests (at, path) VALUES (?, 'exact')", (time.time(),))
    return conn


@pytest.mark.parametrize("args", [["purge", "--all", "--dry-run"], ["replay", "-", "--dry-run"]])
def test_a_dry_run_leaves_the_write_ahead_log_as_it_found_it(ollama: FakeOllama, isolated_env: Path,
                                                            args: list[str]) -> None:
    _seed(isolated_env, "a question", "an answer")
    with cache_at(isolated_env) as store:
        store.checkpoint()
    assert not wal(isolated_env)
    first = run_proc(*args, input="a question\n")
    assert first.exit_code == 0, first.stderr
    assert not wal(isolated_env)  # none before, none after
    holder = _hold_wal(isolated_env)
    try:
        before = wal(isolated_env)
        assert before
        second = run_proc(*args, input="a question\n")
        assert second.exit_code == 0, second.stderr
        assert wal(isolated_env) == before
    finally:
        holder.close()


def test_a_dry_run_leaves_a_wal_nobody_holds_as_it_found_it(isolated_env: Path) -> None:
    _seed(isolated_env, "a question", "an answer")
    killed = subprocess.run([sys.executable, "-c", (  # writes, then dies without closing: its WAL stays
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute(\"INSERT INTO requests (at, path) VALUES (1, 'exact')\")\n"
        "os._exit(0)\n"), str(isolated_env)])
    assert killed.returncode == 0
    before, database = wal(isolated_env), isolated_env.read_bytes()
    assert before
    result = run_proc("purge", "--all", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert (wal(isolated_env), isolated_env.read_bytes()) == (before, database)


# -- 6. one error style --------------------------------------------------------------------

@pytest.mark.parametrize(("args", "line"), [
    (["ask", "-x"], "semcache: error: no such option: -x (semcache ask --help)"),
    (["ask", "--modle", "llama3.2", "q"],
     "semcache: error: no such option: --modle; did you mean --embed-model, --model? (semcache ask --help)"),
    (["ask", "q", "-m"], "semcache: error: option '-m' requires an argument (semcache ask --help)"),
    (["inspect", "--limit", "many"],
     "semcache: error: invalid value for '--limit': 'many' is not a valid int range (semcache inspect --help)"),
    (["replay", "-", "-j", "0"],
     "semcache: error: invalid value for '-j' / '--jobs': 0 is not in the range 1<=x<=64 (semcache replay --help)"),
    (["asj", "q"], "semcache: error: no such command 'asj'; did you mean 'ask'? (semcache --help)"),
    (["frobnicate"], "semcache: error: no such command 'frobnicate' (semcache --help)"),
    (["copy", "--to", "x.db"], "semcache: error: missing option '--from' (semcache copy --help)"),
    (["--verbose"], "semcache: error: no such option: --verbose; did you mean --version? (semcache --help)"),
    (["stats", "extra"], "semcache: error: got unexpected extra argument(s) (extra) (semcache stats --help)"),
])
def test_usage_errors_are_one_line_in_the_one_style(args: list[str], line: str) -> None:
    result = run_proc(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", line + "\n")


def test_a_bad_sort_prints_no_header_before_its_error(isolated_env: Path) -> None:
    _seed(isolated_env, "a question", "an answer")
    result = run_proc("inspect", "--sort", "bogus")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == ("semcache: error: invalid value for '--sort': 'bogus' is not one of 'newest', 'oldest', "
                             "'hits', 'last-hit' (semcache inspect --help)\n")


# -- 7. each command's exit codes ------------------------------------------------------------

@pytest.mark.parametrize(("command", "codes"), [
    ("ask", [0, 1, 2, 3, 4, 5, 6]),
    ("replay", [0, 1, 2, 4, 5, 6]),
    ("inspect", [0, 1, 2, 4, 5, 6]),
    ("purge", [0, 1, 2, 6]),
    ("stats", [0, 1, 2, 6]),
    ("copy", [0, 1, 2, 6]),
])
def test_help_lists_the_exit_codes_the_command_can_return(command: str, codes: list[int]) -> None:
    result = run_proc(command, "--help")
    assert result.exit_code == 0
    paragraphs = [" ".join(p.split()) for p in result.stdout.split("\n\n")]
    epilog = next(p for p in paragraphs if p.startswith("Exit codes:"))
    assert [int(code) for code in re.findall(r"(?:: |; )(\d+) ", epilog)] == codes
    assert epilog.rstrip().endswith("130/143 interrupted (SIGINT/SIGTERM).")
    if command == "inspect":
        assert "4 Ollama unreachable or timed out (--similar)" in epilog
