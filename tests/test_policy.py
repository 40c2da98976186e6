"""The pure rules: normalisation, keys, scope, freshness, confidence, poisoning, gate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from semcache_cli import policy
from semcache_cli.policy import Candidate, Scope


def test_normalise_folds_case_space_and_trailing_punctuation_after_a_word() -> None:
    assert policy.normalise("  What is   semantic\tcaching?! ") == "what is semantic caching"
    assert policy.normalise("Straße") == policy.normalise("STRASSE")  # casefold, not lower
    assert policy.normalise("Cafe\u0301?") == policy.normalise("café")  # NFD and NFC: the same characters
    assert policy.normalise("what is 2+2?") == "what is 2+2?"  # after a digit, `?.!` are kept (`5!`)
    assert policy.normalise("ＨＥＬＬＯ") != "hello"  # NFC, not NFKC: compatibility forms stay apart


def test_normalise_keeps_what_changes_meaning() -> None:
    assert policy.normalise("enable 2FA") != policy.normalise("disable 2FA")
    assert policy.normalise("¿qué?") == "¿qué"  # leading punctuation is content


def test_exact_key_is_shared_by_variants_and_differs_otherwise() -> None:
    assert policy.exact_key("What is semantic caching?") == policy.exact_key("what is   semantic caching")
    assert policy.exact_key("What is semantic caching?") != policy.exact_key("What is caching?")


@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    once = policy.normalise(text)
    assert policy.normalise(once) == once


@given(st.text(alphabet=st.characters(categories=["L", "N"])), st.characters(categories=["L"]),
       st.sampled_from(["?", "!", ".", "...", " ?", "?!"]))
def test_trailing_punctuation_after_a_word_never_changes_the_key(text: str, last: str, tail: str) -> None:
    assert policy.exact_key(text + last + tail) == policy.exact_key(text + last)


@given(st.text(), st.text())
def test_keys_are_equal_exactly_when_the_normalised_texts_are(a: str, b: str) -> None:
    assert (policy.exact_key(a) == policy.exact_key(b)) == (policy.normalise(a) == policy.normalise(b))


def test_model_names_are_canonical() -> None:
    assert policy.canonical_model("llama3.2") == "llama3.2:latest"
    assert policy.canonical_model("Llama3.2:latest") == "llama3.2:latest"
    assert policy.canonical_model("hf.co/org/model") == "hf.co/org/model:latest"
    assert policy.canonical_model("qwen3:0.6b") == "qwen3:0.6b"


def test_scope_changes_with_everything_that_changes_the_answer() -> None:
    base = Scope("default", "llama3.2")
    variants = [
        Scope("other", "llama3.2"),
        Scope("default", "qwen2.5"),
        Scope("default", "llama3.2", system="Be terse."),
        Scope("default", "llama3.2", options={"temperature": 0.0}),
        Scope("default", "llama3.2", format="json"),
    ]
    hashes = {base.hash, *(v.hash for v in variants)}
    assert len(hashes) == 6
    assert Scope("default", "LLAMA3.2:latest").hash == base.hash
    assert Scope("d", "m", options={"a": 1, "b": 2}).hash == Scope("d", "m", options={"b": 2, "a": 1}).hash


def test_freshness_decays_linearly_and_confidence_weights_it() -> None:
    assert policy.freshness(100.0, 100.0, now=100.0) == 1.0
    assert policy.freshness(100.0, 100.0, now=150.0) == 0.5
    assert policy.freshness(100.0, 100.0, now=500.0) == 0.0
    assert policy.freshness(100.0, None, now=1e12) == 1.0
    assert policy.confidence(0.9, 0.5) == 0.7 * 0.9 + 0.3 * 0.5


def test_poison_reasons() -> None:
    assert policy.poison_reason("Fine answer", "stop") is None
    assert policy.poison_reason("Fine answer", None) is None  # servers before v0.1.35
    assert policy.poison_reason("   ", "stop") == "empty answer"
    assert "length" in (policy.poison_reason("cut off", "length") or "")
    assert policy.poison_reason('{"error": "boom"}', "stop") is not None
    assert policy.poison_reason('{"errors_seen": 0} is valid JSON output', "stop") is None


def candidate(similarity: float = 0.95, created: float = 0.0, ttl: float | None = 100.0,
              response: str = "ok", done: str | None = "stop") -> Candidate:
    return Candidate(1, similarity, created, ttl, response, done)


def test_gate_reasons_in_order() -> None:
    assert policy.judge(candidate(), now=10, min_confidence=0.7).serve
    assert policy.judge(candidate(), now=100, min_confidence=0.7).reason == policy.EXPIRED
    assert policy.judge(candidate(response=""), now=10, min_confidence=0.7).reason == policy.POISONED
    # 0.7*0.86 + 0.3*0.2 = 0.662 < 0.7: similar enough, too old to trust at that similarity
    low = policy.judge(candidate(similarity=0.86), now=80, min_confidence=0.7)
    assert (low.serve, low.reason) == (False, policy.LOW_CONFIDENCE)
    assert low.confidence == 0.7 * 0.86 + 0.3 * 0.2


@given(
    similarity=st.floats(0, 1),
    age=st.floats(0, 1e9),
    ttl=st.floats(1e-3, 1e9),
    min_confidence=st.floats(0, 1),
    response=st.sampled_from(["", "  ", "answer"]),
    done=st.sampled_from([None, "stop", "length", "load"]),
)
def test_expired_or_poisoned_is_never_served(similarity: float, age: float, ttl: float, min_confidence: float,
                                             response: str, done: str | None) -> None:
    verdict = policy.judge(candidate(similarity, 0.0, ttl, response, done), now=age, min_confidence=min_confidence)
    if age >= ttl or policy.poison_reason(response, done):
        assert not verdict.serve
    if verdict.serve:
        assert verdict.confidence >= min_confidence


@given(st.text())
def test_the_stored_question_has_the_key_of_the_asked_one(text: str) -> None:
    # ask stores and sends policy.trim(question): trimming twice, or before normalising,
    # changes nothing, so a stored question's key is the one its asker's text got
    assert policy.trim(policy.trim(text)) == policy.trim(text)
    assert policy.normalise(policy.trim(text)) == policy.normalise(text)
