"""The exact key merges only what cannot change what is asked (docs/exact-key.md): each
pair that differs in meaning is kept apart through the CLI, 200 generated pairs that
differ only in meaning-free ways still hit exactly, and stores keyed by the normalisation
before (NFKC, all trailing punctuation, all whitespace) are migrated on both backends."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path
from typing import Any

from conftest import SHARED_DATA, run_cli, stored
from fake_ollama import FakeOllama
from hypothesis import given
from hypothesis import strategies as st

from semcache_cli import policy

# Each second question got the first one's answer as an exact hit before (issue 22).
KEPT_APART = [
    ("What is C?", "What is C#?"),
    ("F", "F#"),
    ("What is 2³?", "What is 23?"),
    ("Raise prices by 5%", "Raise prices by 5"),
    ("What is 5!", "What is 5"),
    ("Plot x₁ against y", "Plot x1 against y"),
    ("Add ½ cup of sugar", "Add 1⁄2 cup of sugar"),
    ("Explain C++?", "Explain C++"),  # after a symbol a `?` may be content: regex `a+?`
    ("Is it C#?", "Is it C#"),
    ("What type is 3.", "What type is 3"),
    ("ＨＥＬＬＯ", "HELLO"),  # a compatibility form, not the same character
    ("Why does this fail?\nif x:\n    y()\n  z()", "Why does this fail?\nif x:\n    y()\n    z()"),
    ("Review:\n-    a = 1\n+    a = 2", "Review:\n-  a = 1\n+  a = 2"),
    ("Fix:\nx = None\n", "Fix:\nx = none\n"),  # case is content in code
    ("Does this parse?\nprogram p;\nbegin\nend.", "Does this parse?\nprogram p;\nbegin\nend"),
    ("    if x:\n        y()\n    z()", "if x:\n        y()\n    z()"),  # the first line's indentation too
]

ASKED_ALIKE = [
    ("What is C?", "  what is   c ?! "),
    ("Café near me?", "CAFE\u0301 NEAR ME"),
    ("Wo liegt die Straße?", "wo liegt die STRASSE"),
    ("什么是缓存？", "什么是缓存"),
    ("\n\nFix:\n    return x\n\n", "Fix:\n    return x"),
]


def test_questions_that_differ_in_meaning_get_different_keys() -> None:
    for first, second in KEPT_APART:
        assert policy.exact_key(first) != policy.exact_key(second), (first, second)
    for first, second in ASKED_ALIKE:
        assert policy.exact_key(first) == policy.exact_key(second), (first, second)


SYMBOLS = "#%+-*/^=<>~|&$€£@'\"`)]}0123456789²³₁₂½¼"


@given(st.text(st.characters(categories=["L", "Zs"]), min_size=1), st.sampled_from(SYMBOLS),
       st.sampled_from(["", "?", "!", "."]))
def test_a_symbol_or_digit_at_the_end_is_never_dropped(text: str, symbol: str, tail: str) -> None:
    assert policy.exact_key(text + symbol + tail) != policy.exact_key(text + tail)


# NFKC folded each of these into the ASCII on the right; each is another character.
COMPATIBILITY = {"²": "2", "³": "3", "₁": "1", "½": "1⁄2", "①": "1", "㎏": "kg", "２": "2", "™": "tm"}


@given(st.text(st.characters(categories=["L", "N"]), min_size=1), st.sampled_from(sorted(COMPATIBILITY)))
def test_a_compatibility_character_is_not_its_decomposition(text: str, char: str) -> None:
    assert policy.exact_key(f"{text} {char} {text}") != policy.exact_key(f"{text} {COMPATIBILITY[char]} {text}")


@given(st.lists(st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=8), min_size=2),
       st.integers(0, 2**32))
def test_indentation_of_a_multi_line_question_is_kept(lines: list[str], seed: int) -> None:
    rng = random.Random(seed)
    indented = [" " * rng.randint(0, 8) + line for line in lines]
    index = rng.randrange(1, len(lines))
    other = list(indented)
    other[index] = ("\t" if rng.random() < 0.5 else " ") + other[index]
    assert policy.exact_key("\n".join(indented)) != policy.exact_key("\n".join(other))


# Places whose names change under NFD, and a few scripts: the generated questions must
# exercise the Unicode forms, not only ASCII.
PLACES = ["Zürich", "São Paulo", "Kraków", "Málaga", "Reykjavík", "Hà Nội", "서울", "Ελλάδα", "Ålesund", "Besançon",
          "Čeština", "Москва", "Łódź", "Curaçao"]
SPACES = [" ", "  ", "\t", " \t ", "\u00a0", "\u3000"]


def meaning_free_variant(text: str, rng: random.Random) -> str:
    """The same question as another person might type it: other case, other runs of
    spaces, spaces around it, a trailing `?.!` after a word, the other Unicode form."""
    words = text.split()
    words = [word.upper() if rng.random() < 0.3 else word.title() if rng.random() < 0.3 else word for word in words]
    out = words[0]
    for word in words[1:]:
        out += rng.choice(SPACES) + word
    if unicodedata.category(out[-1])[0] == "L":
        out += rng.choice(["", "?", "!", ".", "?!", "...", " ?", "？"])
    out = rng.choice(["", " ", "\t"]) + out + rng.choice(["", " ", "\n"])
    return unicodedata.normalize(rng.choice(["NFC", "NFD"]), out)


def generated_pairs(count: int, seed: int = 22) -> list[tuple[str, str]]:
    """`count` real user questions (CLINC150), half with a place of non-ASCII letters,
    each with a meaning-free variant."""
    rng = random.Random(seed)
    texts = sorted({json.loads(line)["text"] for line in (SHARED_DATA / "clinc150.jsonl").read_text().splitlines()})
    pairs = []
    for text in rng.sample(texts, count):
        if rng.random() < 0.5:
            text = f"{text} in {rng.choice(PLACES)}"
        text = unicodedata.normalize(rng.choice(["NFC", "NFD"]), text)
        pairs.append((text, meaning_free_variant(text, rng)))
    return pairs


def test_200_generated_pairs_that_differ_only_in_meaning_free_ways_hit_exactly(
        ollama: FakeOllama, isolated_env: Path, tmp_path: Path) -> None:
    pairs = generated_pairs(200)
    assert len({policy.normalise(first) for first, _ in pairs}) == 200  # 200 different questions
    assert sum(first != second for first, second in pairs) == 200
    firsts, seconds = tmp_path / "firsts.jsonl", tmp_path / "seconds.jsonl"
    firsts.write_text("".join(json.dumps({"query": first}) + "\n" for first, _ in pairs))
    seconds.write_text("".join(json.dumps({"query": second}) + "\n" for _, second in pairs))
    assert run_cli("replay", str(firsts)).exit_code == 0
    entry_of = {entry.query: entry.id for entry in stored(isolated_env)}
    assert len(entry_of) == 200
    out = tmp_path / "out.jsonl"
    assert run_cli("replay", "--dry-run", "--out", str(out), str(seconds)).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["source"], row["matched"]) for row in rows] == \
        [("exact", entry_of[first.strip()]) for first, _ in pairs]


def ask_json(*args: str, input: str | None = None) -> dict[str, Any]:
    result = run_cli("ask", "--json", *args, input=input)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_each_pair_that_differs_in_meaning_is_kept_apart_through_the_cli(ollama: FakeOllama) -> None:
    # The exact layer alone: the test server's word-hash embedding cannot see a `#` or a
    # superscript, so its semantic layer would find the pairs identical (an embedding model
    # the server does not have leaves the lookup to the exact key).
    exact_only = ("--embed-model", "not-on-this-server")
    for first, second in KEPT_APART:
        stored_first = ask_json(*exact_only, "-", input=first)
        assert stored_first["source"] == "model"
        again = ask_json(*exact_only, "-", input=second)
        assert again["source"] != "exact", (first, second)
        assert again["response"] == f"This is the answer to: {second.strip()}"
        assert ask_json(*exact_only, "-", input=first)["source"] == "exact"  # each question still finds its own answer
    assert ollama.generations == 2 * len(KEPT_APART)


def test_a_pasted_snippet_reaches_the_model_with_its_first_line_indented(ollama: FakeOllama,
                                                                        isolated_env: Path) -> None:
    snippet = "    if x:\n        y()\n    z()"
    ask_json("-", input=f"\n\n{snippet}\n\n")
    (chat,) = [body for path, body in ollama.requests if path == "/api/chat"]
    assert chat["messages"][-1]["content"] == snippet  # the blank lines around it dropped, nothing else
    (entry,) = stored(isolated_env)
    assert entry.query == snippet
    assert ask_json("-", input=snippet)["source"] == "exact"
    assert ask_json("-", input=snippet.lstrip())["source"] != "exact"


def test_replay_keeps_a_snippets_first_line_indented(ollama: FakeOllama, tmp_path: Path) -> None:
    snippet = "\t\tcase 1:\n\t\t\treturn a;\n\tdefault:\n\t\treturn b;"
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query": f"\n{snippet}\n"}) + "\n")
    assert run_cli("replay", str(queries)).exit_code == 0
    assert [body["messages"][-1]["content"] for path, body in ollama.requests if path == "/api/chat"] == [snippet]
    assert ask_json("-", input=snippet)["source"] == "exact"
    assert ask_json("-", input=snippet.lstrip())["source"] != "exact"


def test_the_scope_keeps_system_prompts_and_options_as_given() -> None:
    # The scope hashes them as they are: a system prompt or an option differing in case,
    # spacing, punctuation or a compatibility form is another scope, never the same one.
    systems = ["Reply in JSON.", "Reply in JSON", "reply in json.", "Reply  in JSON.", "Reply in ＪＳＯＮ.",
               "Reply in JSON.\n    Indent by 4.", "Reply in JSON.\n  Indent by 4.", None]
    assert len({policy.Scope("default", "llama3.2", system=system).hash for system in systems}) == len(systems)
    options: list[dict[str, Any]] = [{"stop": ["a", "b"]}, {"stop": ["b", "a"]}, {"stop": ["A", "b"]}, {"seed": 1},
                                     {"seed": 2}, {}]
    assert len({policy.Scope("default", "llama3.2", options=o).hash for o in options}) == len(options)
