"""The documentation says what the CLI does: the command reference (docs/reference.md) is
the CLI's own help (docs/reference.py), every example in a --help parses, the JSON shown in
the README and docs/ has the keys the commands print, and the changelog starts at this version."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_proc
from fake_ollama import FakeOllama
from typer.core import TyperGroup
from typer.main import get_command

from semcache_cli import __version__
from semcache_cli.cli import app, join_option_pairs

README = REPO / "README.md"
REFERENCE = REPO / "docs" / "reference.md"
COMMANDS = ["ask", "inspect", "purge", "stats", "replay", "copy"]


def reference(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "docs" / "reference.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_the_reference_is_the_clis_own_help() -> None:
    result = reference("--check")
    assert result.returncode == 0, result.stderr  # run `python docs/reference.py` after changing an option
    text = REFERENCE.read_text()
    for name in ["semcache", *COMMANDS]:
        assert f"<!-- [[[reference:{name}]]] -->" in text
    ask = run_proc("ask", "--help").stdout  # a real process says the same, wrapped to its terminal
    assert " ".join(ask.split()) in " ".join(text.split())


def test_a_stale_reference_is_caught(tmp_path: Path) -> None:
    stale = tmp_path / "reference.md"
    stale.write_text(REFERENCE.read_text().replace("Print only the answer: no status", "Print only the answer; no status"))
    result = reference("--check", str(stale))
    assert result.returncode == 1
    assert result.stderr == "reference.md: the reference of ask is out of date; run python docs/reference.py\n"
    assert "answer; no status" in stale.read_text()  # a check changes nothing
    assert reference(str(stale)).returncode == 0 and stale.read_text() == REFERENCE.read_text()


def examples(name: str) -> list[str]:
    help_text = run_proc(*([] if name == "semcache" else [name]), "--help").stdout
    block = help_text.split("Examples:\n", 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def semcache_words(line: str) -> list[str]:
    """The words of the semcache command in an example line: after `semcache`, up to a
    pipe, a redirection, `||` or a comment."""
    words = shlex.split(line, comments=True)
    words = words[words.index("semcache") + 1:]
    for stop in ("|", "||", "&&", "<", ">"):
        if stop in words:
            words = words[:words.index(stop)]
    return words


@pytest.mark.parametrize("name", ["semcache", *COMMANDS])
def test_every_help_ends_with_examples_that_parse(name: str) -> None:
    found = examples(name)
    assert 2 <= len(found) <= 3
    root = get_command(app)
    assert isinstance(root, TyperGroup)
    for line in found:
        words = join_option_pairs(semcache_words(line))
        if name == "semcache":
            assert words and (words[0] in COMMANDS or words[0].startswith("--")), line
            continue
        assert words[0] == name, line
        with root.make_context("semcache", [name], resilient_parsing=True) as ctx:
            command = root.get_command(ctx, name)
            assert command is not None
            command.make_context(name, words[1:], parent=ctx)  # a usage error would raise here


def test_the_json_the_docs_show_has_the_keys_the_commands_print(ollama: FakeOllama) -> None:
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    shown = [json.loads(line) for page in pages for line in page.read_text().splitlines() if line.startswith('{"')]
    asked = run_proc("ask", "--json", "What is semantic caching?")
    missed = run_proc("ask", "--json", "--cache-only", "Never asked before")
    purged = run_proc("purge", "--expired", "--json")
    assert (asked.exit_code, missed.exit_code, purged.exit_code) == (0, 3, 0)
    printed = {0: set(json.loads(asked.stdout)), 3: set(json.loads(missed.stdout))}
    asks = [obj for obj in shown if "question" in obj]
    assert {obj["exit_code"] for obj in asks} == {0, 3}  # an answer and a cache-only miss are shown
    for obj in asks:
        assert set(obj) == printed[obj["exit_code"]]
    assert [set(obj) for obj in shown if "dry_run" in obj] == [set(json.loads(purged.stdout))]


def test_the_changelog_starts_at_this_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    versions = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert versions[0] == "Unreleased" and versions[-1] == __version__
