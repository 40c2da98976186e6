"""Pure decisions of the cache: normalisation, keys, scope, TTL, freshness,
confidence, poisoning and the reuse gate.

Nothing here does I/O or imports numpy, so the exact-hit path stays cheap and every
rule can be tested directly (and property-tested) without a database or a server.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, NamedTuple

try:  # the built-in sha256: hashlib's OpenSSL binding costs ~4 ms to load on every ask
    from _sha256 import sha256  # type: ignore[import-not-found]  # Python 3.11's built-in module has no stub
except ImportError:
    from hashlib import sha256

# Miss reasons, as they appear in --json, the status line and the request log.
NO_MATCH = "no_match"
EXPIRED = "expired"
POISONED = "poisoned"
LOW_CONFIDENCE = "low_confidence"
BYPASS = "bypass"
AMBIGUOUS = "ambiguous"  # margin rule: two different answers nearly tied
CALIBRATING = "calibrating"  # too few vectors of the embedding model stored for a semantic hit
EMBED_FAILED = "embed_failed"  # the embedding model is missing or failed: no semantic layer for this ask
TOO_LONG_TO_EMBED = "too_long_to_embed"  # longer than the embedding model's context: exact layer only
CACHE_UNUSABLE = "cache_unusable"  # the store is damaged: the model answered, the cache was left out
GUARD_PREFIX = "guard:"  # guard:negation, guard:number, ...

# Default weights of the confidence score: similarity matters most, freshness decays
# linearly over the entry's TTL.
SIMILARITY_WEIGHT = 0.7
FRESHNESS_WEIGHT = 0.3

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_ENDS = "?.!？！。؟"  # ASCII, full-width, ideographic full stop, Arabic

# done_reason values that mean the answer is not a finished reply.
_UNFINISHED_REASONS = {"length", "load", "unload"}


def trim(query: str) -> str:
    """The question without the whitespace around it, as it is stored and sent to the
    model. A multi-line question keeps its first line's indentation (only the blank lines
    before it go): `    if x:` and `if x:` over the same indented lines are different code."""
    text = query.strip()
    if len(text.splitlines()) < 2:
        return text
    lines = query.rstrip().splitlines(keepends=True)
    while not lines[0].strip():
        del lines[0]
    return "".join(lines)


def normalise(query: str) -> str:
    """The text the exact layer compares: it merges only what cannot change what is asked.

    A one-line question: canonically equivalent Unicode forms (NFC, never NFKC: `2³` is
    not `23`, `x₁` not `x1`, `½` not `1⁄2`), case, runs of whitespace, and a trailing run
    of `?.!` (or `？！。؟`) after a letter ("What is X ?!" == "what is x"); after a
    digit or a symbol they are content (`5!`, `C#?`, `C++?`). A multi-line question (code,
    a diff, a log) is compared character for character after NFC: indentation, case and
    the last line's punctuation can all change its meaning; only the blank lines and
    spaces around it are dropped."""
    text = trim(query)
    if len(text.splitlines()) > 1:
        return unicodedata.normalize("NFC", text)
    # Unicode's canonical caseless match: NFD, fold, then compose.
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())
    text = _WHITESPACE.sub(" ", text)
    end = len(text)
    while end and text[end - 1] in _SENTENCE_ENDS:
        end -= 1
    cut = end
    while cut and text[cut - 1] == " ":
        cut -= 1
    if end < len(text) and cut and unicodedata.category(text[cut - 1])[0] in "LM":
        return text[:cut]
    return text


# Keys are cut to what their job needs: they are stored in every entry, vector and index
# row (about 190 bytes an entry at full length). 128 bits name a question and 64 bits one
# of a cache's few scopes with no collision in any cache that fits on a disk.
EXACT_KEY_HEX = 32
SCOPE_HASH_HEX = 16


def exact_key(query: str) -> str:
    """sha256 of the normalised query, its first 128 bits; paired with the scope hash."""
    return sha256(normalise(query).encode("utf-8")).hexdigest()[:EXACT_KEY_HEX]


def canonical_model(name: str) -> str:
    """Ollama model names are case-insensitive and default to the tag `latest`, so
    `llama3.2` and `Llama3.2:latest` name one model and must share one scope."""
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


class Scope(NamedTuple):
    """Everything that changes the answer. Answers never cross scopes."""

    namespace: str
    model: str
    system: str | None = None
    options: dict[str, Any] = {}  # never mutated, so one shared default is safe
    format: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "model": canonical_model(self.model),
            "system": self.system,
            "options": self.options,
            "format": self.format,
        }

    @property
    def hash(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return sha256(canonical.encode("utf-8")).hexdigest()[:SCOPE_HASH_HEX]


def expires_at(created_at: float, ttl: float | None) -> float | None:
    return None if ttl is None else created_at + ttl


def freshness(created_at: float, ttl: float | None, now: float) -> float:
    """1.0 when just stored, falling linearly to 0.0 at expiry; 1.0 forever without TTL."""
    if ttl is None:
        return 1.0
    if ttl <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - (now - created_at) / ttl))


def confidence(similarity: float, fresh: float) -> float:
    return SIMILARITY_WEIGHT * similarity + FRESHNESS_WEIGHT * fresh


def tied(best: float, runner_up: float, margin: float) -> bool:
    """The margin rule's test: the runner-up is within `margin` of the best (0: off)."""
    return margin > 0 and runner_up >= best - margin


def poison_reason(response: str | None, done_reason: str | None) -> str | None:
    """Why an answer must never be served or stored, or None when it is clean."""
    if response is None or not response.strip():
        return "empty answer"
    if done_reason in _UNFINISHED_REASONS:
        return f"unfinished generation (done_reason={done_reason})"
    stripped = response.strip()
    if stripped.startswith('{"error"'):
        try:
            if "error" in json.loads(stripped):
                return "error text instead of an answer"
        except ValueError:
            pass
    return None


class Candidate(NamedTuple):
    """A stored entry offered by the exact or semantic layer."""

    entry_id: int
    similarity: float
    created_at: float
    ttl: float | None
    response: str
    done_reason: str | None


class Verdict(NamedTuple):
    serve: bool
    reason: str | None  # miss reason when not served
    confidence: float
    detail: str | None = None  # a guard's: the words of the two questions it fired on


def judge(candidate: Candidate, now: float, min_confidence: float, threshold: float = 0.0,
          guard: str | None = None, guard_words: str | None = None) -> Verdict:
    """The reuse gate, the same for both layers: similarity threshold, the answer-safety
    guard that fired on the two questions (semantic candidates only), expiry, poisoning,
    then confidence."""
    fresh = freshness(candidate.created_at, candidate.ttl, now)
    score = confidence(candidate.similarity, fresh)
    if candidate.similarity < threshold:
        return Verdict(False, NO_MATCH, score)
    if guard is not None:
        return Verdict(False, f"{GUARD_PREFIX}{guard}", score, guard_words)
    exp = expires_at(candidate.created_at, candidate.ttl)
    if exp is not None and now >= exp:
        return Verdict(False, EXPIRED, score)
    if poison_reason(candidate.response, candidate.done_reason):
        return Verdict(False, POISONED, score)
    if score < min_confidence:
        return Verdict(False, LOW_CONFIDENCE, score)
    return Verdict(True, None, score)
