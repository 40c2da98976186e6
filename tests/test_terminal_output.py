"""A cached answer (or a question, or a model's new answer) that carries terminal escape
sequences never reaches a terminal as such: on a real pseudo-terminal semcache shows them
as symbols, through `ask` (hit and miss alike), `inspect`'s table, one entry and its
JSON; piped, the exact bytes come out, as scripts need them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_in_terminal, run_proc
from fake_ollama import FakeOllama


@pytest.fixture(autouse=True)
def _no_reference_bootstrap(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about what reaches a terminal: a new cache's one-off embedding of the reference
    questions (tests/test_cold_start.py) would add a request and a status line to each."""
    monkeypatch.setenv("SEMCACHE_SCALE", "cosine")

# What an answer planted by someone, or a model led astray, could hold: a clipboard write
# (OSC 52), a window title (OSC 0), a hyperlink (OSC 8), a screen clear and a colour (CSI),
# a one-byte CSI (C1 0x9B), a bidirectional override, a carriage return that hides text.
HOSTILE = ("Sure.\x1b]52;c;cm0gLXJmIH4=\x07 Title\x1b]0;pwned\x07 "
           "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\ \x1b[2Jcleared \x1b[31mred\x1b[0m "
           "\x9b2Jc1 \u202eevil\u202c\tTabbed\nLine two\rhidden")
RAW_MARKS = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


def _visible(text: str) -> None:
    for mark in RAW_MARKS:
        assert mark not in text, (mark, text)
    for shown in ("␛]52;c;cm0gLXJmIH4=␇", "␛]0;pwned␇", "␛]8;;https://evil.example/␛\\click", "␛[2Jcleared",
                  "␛[31mred␛[0m", "<U+009B>2Jc1", "<U+202E>evil<U+202C>"):
        assert shown in text, (shown, text)


def test_a_hit_and_a_miss_show_escape_sequences_as_symbols_on_a_terminal(ollama: FakeOllama) -> None:
    ollama.replies["plant"] = HOSTILE
    code, miss = run_in_terminal("ask", "plant")  # streamed from the model
    assert code == 0
    _visible(miss)
    code, hit = run_in_terminal("ask", "plant")  # the same answer, from the cache
    assert code == 0
    _visible(hit)
    assert "Tabbed\nLine two␍hidden" in hit  # tabs and newlines kept; the PTY turns \n into \r\n
    answer = lambda text: text[: text.index("hidden") + len("hidden")]  # noqa: E731
    assert answer(hit) == answer(miss)  # a hit looks exactly like the miss it repeats


def test_piped_the_exact_bytes_come_out(ollama: FakeOllama) -> None:
    ollama.replies["plant"] = HOSTILE
    for _ in ("miss", "hit"):
        result = run_proc("ask", "plant")
        assert result.exit_code == 0
        assert result.stdout == HOSTILE + "\n"
    listed = run_proc("inspect", "--jsonl")
    assert json.loads(listed.stdout.splitlines()[0])["response"] == HOSTILE


def test_inspect_shows_them_as_symbols_on_a_terminal(ollama: FakeOllama) -> None:
    ollama.replies["plant \x1b]0;question title\x07"] = HOSTILE
    assert run_proc("ask", "plant \x1b]0;question title\x07").exit_code == 0
    code, table = run_in_terminal("inspect")
    assert code == 0
    for mark in RAW_MARKS:
        assert mark not in table
    assert "plant ␛]0;question title␇" in table and "Sure.␛]52;c;" in table
    code, detail = run_in_terminal("inspect", "1")
    assert code == 0
    _visible(detail)
    code, as_json = run_in_terminal("inspect", "1", "--json")
    assert code == 0
    for mark in RAW_MARKS:
        assert mark not in as_json
    # still the exact data once parsed (the PTY turned the one line's end into \r\n)
    assert json.loads(as_json)["response"] == HOSTILE
