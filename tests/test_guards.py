"""Answer-safety guards: each rule on pairs that must not share an answer and on
paraphrases that must, then through `ask`, `inspect --similar` and the config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import neutral_scale, run_cli
from fake_ollama import FakeOllama

from semcache_cli import config, guards
from semcache_cli.errors import UsageError

ALL = tuple(guards.GUARDS)

MUST_DIFFER = [
    ("how do I enable 2FA", "how do I disable 2FA", "negation"),
    ("turn on the kitchen lights", "turn off the kitchen lights", "negation"),
    ("i want to cancel my order", "i do not want to cancel my order", "negation"),
    ("can I pay without a card", "can I pay with a card", "negation"),
    ("why isn't my card working", "why is my card working", "negation"),
    ("add milk to my shopping list", "remove milk from my shopping list", "negation"),
    ("what happened before the war", "what happened after the war", "negation"),
    ("what is 15% of 80", "what is 15% of 60", "number"),
    ("top 3 movies of 2023", "top 10 movies of 2023", "number"),
    ("set an alarm for 6am", "set an alarm for 7am", "number"),
    ("python 3.11 release notes", "python 3.12 release notes", "number"),
    ("convert 5 dollars to euros", "convert 5 euros to pounds", "number"),
    ("what was the weather on march 3", "what was the weather on march 4", "number"),
    ("set a timer for five minutes", "set a timer for ten minutes", "number"),
    ("weather in Paris tomorrow", "weather in London tomorrow", "entity"),
    ("what does the error \"file not found\" mean", "what does the error \"access denied\" mean", "entity"),
    ("how do I open config.yaml", "how do I open settings.yaml", "entity"),
    ("what does os.path.join do", "what does os.path.split do", "entity"),
    ("what is https://example.com about", "what is https://example.org about", "entity"),
    ("what does getUserName return", "what does getUserId return", "entity"),
    ("flights from Paris to Rome", "flights from Rome to Paris", "direction"),
    ("is a cat bigger than a dog", "is a dog bigger than a cat", "direction"),
    ("convert km to miles", "convert miles to km", "direction"),
    ("translate from spanish to english", "translate from english to spanish", "direction"),
    ("python vs java for beginners", "java vs python for beginners", "direction"),
    # issue 22: each was served the other's answer when guards looked at each question alone
    ("How do I turn on dark mode in Windows?", "How do I turn off dark mode on Windows?", "negation"),
    ("How do I disable dark mode in Windows?", "How do I turn on dark mode in Windows?", "negation"),
    ("How do I deactivate dark mode in Windows?", "How do I turn on dark mode in Windows?", "negation"),
    ("How much is 100 EUR in USD?", "How much is 100 USD in EUR?", "direction"),
    ("Book a flight Rome to Paris", "Flights from Paris to Rome", "direction"),
    ("turn the lights off", "turn on the lights", "negation"),
    ("how do I switch bluetooth off on my laptop", "how do I turn on bluetooth on my laptop", "negation"),
    ("how do I raise my credit limit", "how do I lower my credit limit", "negation"),
    ("how do I sign in to my account", "how do I sign out of my account", "negation"),
    ("which plants are toxic to cats", "which plants are not toxic to cats", "negation"),
    ("set a timer for 10 minutes", "set a timer for 10 seconds", "number"),
    ("move money from savings to checking", "move money from checking to savings", "direction"),
]

MUST_SHARE = [
    ("how do I reset my password", "what is the way to reset my password"),
    ("How do I reset my Password", "how do i reset my password"),
    ("flights from paris to rome", "flights to rome from paris"),
    ("what is 2 + 2", "what is two plus two"),
    ("I don't know how to change the oil", "how do I change the oil"),
    ("what's the weather like today", "how is the weather today"),
    ("can you tell me a joke", "tell me a joke please"),
    ("I want to book a table for 4", "book me a table for four"),
    ("what is the capital of France", "tell me the capital of France"),
    ("no idea why my account is locked", "why is my account locked"),
    # negations and numbers that both share, or that sit in a different wording
    ("I can't find the code anywhere", "where can I find the code"),
    ("I can't find the code anywhere", "where is my code"),
    ("my card hasn't arrived", "when will my card arrive"),
    ("it hasn't arrived yet, where is my card", "where is my card"),
    ("my card isn't working", "my card is broken"),
    ("my card isn't working", "why does my card not work"),
    ("I paid 20 dollars and the payment failed", "why did my payment fail"),
    ("my 6pm flight got cancelled", "my flight at 6pm was cancelled"),
    ("how do I turn off notifications", "how can I switch off notifications"),
    ("disable autoplay on youtube", "how do I turn off autoplay on youtube"),
    ("turn on dark mode in windows", "how do I turn on dark mode on windows"),
    ("what is the weather in paris in june", "what is the weather in june in paris"),
    ("will my 401k roll over or not", "will my 401k roll over"),
    ("no, that's not right", "that's not right"),
    ("I have no checks left and need to order new checks", "I need to order new checks"),
    ("how high is the air in my tires", "how low is the air in my tires"),  # one measure asked
    ("find a flight under 700", "find a flight under 700 dollars"),  # the unit on one side only
    ("change your accent to british male", "change your accent to the male british one"),
    ("how many meters are in 2 inches", "what is 2 inches in meters"),
    ("I want to cancel my order", "I need to cancel my order"),
]


@pytest.mark.parametrize(("a", "b", "name"), MUST_DIFFER)
def test_pairs_that_must_not_share_an_answer(a: str, b: str, name: str) -> None:
    assert guards.GUARDS[name](a, b) and guards.GUARDS[name](b, a)  # symmetric
    assert guards.check(a, b, ALL) is not None


@pytest.mark.parametrize(("a", "b"), MUST_SHARE)
def test_paraphrases_pass_every_guard(a: str, b: str) -> None:
    assert guards.check(a, b, ALL) is None and guards.check(b, a, ALL) is None


def test_a_guard_says_on_which_words_it_fired() -> None:
    found = guards.check("How do I turn on dark mode in Windows?", "How do I turn off dark mode on Windows?", ALL)
    assert found == ("negation", "turn on", "turn off")  # not the "on" of "on Windows"
    assert found is not None and found.words == '"turn on" vs "turn off"'
    assert guards.check("How much is 100 EUR in USD?", "How much is 100 USD in EUR?", ALL) == (
        "direction", "in usd", "in eur")
    assert guards.check("top 3 movies", "top 10 movies", ALL) == ("number", "3", "10")
    assert guards.check("i want to cancel my order", "i do not want to cancel my order", ALL) == (
        "negation", "", "not want")
    assert guards.Finding("negation", "", "not want").words == 'nothing vs "not want"'
    assert guards.check("weather in Paris", "weather in London", ALL) == ("entity", "paris", "london")


def test_choosing_guards() -> None:
    assert guards.parse("all") == ALL and guards.parse("none") == ()
    assert guards.parse("number, negation,number") == ("number", "negation")
    with pytest.raises(ValueError, match="unknown guard 'spelling'"):
        guards.parse("number,spelling")
    assert guards.check("top 3", "top 10", ("negation",)) is None
    assert config.load_settings({}).guards == ALL == config.DEFAULTS["guards"]
    assert config.load_settings({"guards": "none"}).guards == ()
    assert config.load_settings({}, env={"SEMCACHE_GUARDS": "entity"}).guards == ("entity",)
    with pytest.raises(UsageError, match="--guards: unknown guard 'nope'"):
        config.load_settings({"guards": "nope"})


def at(cosine: float) -> np.ndarray:
    vector = np.zeros(384)
    vector[0], vector[1] = cosine, np.sqrt(1 - cosine**2)
    return vector


@pytest.fixture
def twofa(ollama: FakeOllama, isolated_env: Path) -> FakeOllama:
    neutral_scale(isolated_env)
    ollama.table.update({"how do I enable 2FA": at(1.0), "how do I disable 2FA": at(0.96)})
    assert run_cli("ask", "-q", "how do I enable 2FA", "--embed-model", "all-minilm").exit_code == 0
    return ollama


def test_ask_misses_with_the_guard_as_reason(twofa: FakeOllama) -> None:
    result = run_cli("ask", "how do I disable 2FA", "--embed-model", "all-minilm", "--json", "--no-store")
    outcome = json.loads(result.stdout)
    assert (outcome["source"], outcome["miss_reason"]) == ("model", "guard:negation")
    assert outcome["miss_detail"] == '"disable" vs "enable"'  # the words it fired on, the new question's first
    assert outcome["response"] == "This is the answer to: how do I disable 2FA"
    status = (f'miss (guard:negation: "disable" vs "enable", best similarity {outcome["similarity"]:.3f}, '
              f'cosine {outcome["cosine"]:.3f})')  # the status line says what --json says
    assert status in run_cli("ask", "how do I disable 2FA", "--embed-model", "all-minilm", "--no-store").stderr


def test_guards_none_serves_the_neighbour(twofa: FakeOllama) -> None:
    outcome = json.loads(run_cli("ask", "how do I disable 2FA", "--embed-model", "all-minilm", "--json",
                                 "--guards", "none").stdout)
    assert (outcome["source"], outcome["entry_id"]) == ("semantic", 1)


def test_exact_hits_are_never_guarded(twofa: FakeOllama) -> None:
    outcome = json.loads(run_cli("ask", "How do I enable 2FA?", "--embed-model", "all-minilm", "--json").stdout)
    assert outcome["source"] == "exact"


def test_inspect_similar_shows_which_guard_fired(twofa: FakeOllama) -> None:
    result = run_cli("inspect", "--similar", "how do I disable 2FA", "--embed-model", "all-minilm")
    lines = result.stdout.splitlines()
    verdict = lines[0].split("\t").index("verdict")
    assert lines[1].split("\t")[verdict] == 'guard:negation: "disable" vs "enable"'
    assert lines[-1] == ('ask would miss (guard:negation: "disable" vs "enable", similarity 0.960, cosine 0.960) '
                         "and call the model")
    explained = json.loads(run_cli("inspect", "--similar", "how do I disable 2FA", "--embed-model", "all-minilm",
                                   "--json").stdout)
    assert (explained["decision"]["miss_reason"], explained["decision"]["miss_detail"]) == (
        "guard:negation", '"disable" vs "enable"')
    assert explained["candidates"][0]["guard_words"] == '"disable" vs "enable"'


# -- the margin rule ----------------------------------------------------------------------

def on_axis(cosine: float, axis: int) -> np.ndarray:
    vector = np.zeros(384)
    vector[0], vector[axis] = cosine, np.sqrt(1 - cosine**2)
    return vector


@pytest.fixture
def near_tie(ollama: FakeOllama, isolated_env: Path) -> FakeOllama:
    neutral_scale(isolated_env)
    ollama.table.update({"the probe question": on_axis(1.0, 1), "first stored": on_axis(0.95, 2),
                         "second stored": on_axis(0.948, 3)})
    for question in ("first stored", "second stored"):  # --no-cache: the second must not hit the first
        assert run_cli("ask", "-q", question, "--embed-model", "all-minilm", "--no-cache").exit_code == 0
    return ollama


def ask_probe(*flags: str) -> dict:
    return json.loads(run_cli("ask", "the probe question", "--embed-model", "all-minilm", "--json", "--no-store",
                              *flags).stdout)


def test_a_near_tie_between_two_answers_is_a_miss(near_tie: FakeOllama) -> None:
    assert ask_probe()["source"] == "semantic"  # off by default
    tied = ask_probe("--margin", "0.005")
    assert (tied["source"], tied["miss_reason"]) == ("model", "ambiguous")
    assert tied["similarity"] == pytest.approx(0.95, abs=1e-5)
    clear = ask_probe("--margin", "0.001")  # 0.002 apart: not a tie at this margin
    assert (clear["source"], clear["entry_id"]) == ("semantic", 1)
    explained = json.loads(run_cli("inspect", "--similar", "the probe question", "--embed-model", "all-minilm",
                                   "--margin", "0.005", "--json").stdout)
    assert explained["decision"]["miss_reason"] == "ambiguous"


def test_a_near_tie_with_the_same_answer_is_still_a_hit(ollama: FakeOllama, isolated_env: Path) -> None:
    neutral_scale(isolated_env)
    ollama.table.update({"the probe question": on_axis(1.0, 1), "first stored": on_axis(0.95, 2),
                         "second stored": on_axis(0.948, 3)})
    ollama.replies.update({"first stored": "Same answer.", "second stored": "same answer"})
    for question in ("first stored", "second stored"):
        run_cli("ask", "-q", question, "--embed-model", "all-minilm", "--no-cache")
    assert ask_probe("--margin", "0.005")["source"] == "semantic"
