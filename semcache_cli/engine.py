"""The ask pipeline: validate, scope, exact layer, embed, semantic layer, reuse gate,
model call, store, request log. Returns an Outcome used by `ask` (and by replay).

Cheap first: an exact hit touches only the store, so the HTTP client is imported lazily,
on the first path that needs it, and numpy only for a cache large enough to need it.
Embedding failures degrade the cache instead of breaking the user's script: the exact
layer and the model call still work, and the answer is stored without a vector.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from semcache_cli import policy
from semcache_cli.errors import (
    CacheOnlyMiss,
    EmbedInputTooLong,
    GenerationFailed,
    ModelNotFound,
    OllamaError,
    OllamaUnreachable,
    SemcacheError,
    StoreDamaged,
    StoreReadOnly,
    UnreadableEntry,
    UsageError,
)
from semcache_cli.storage.models import Entry, LogRow, Neighbour, NewEntry

if TYPE_CHECKING:
    from semcache_cli.config import Settings
    from semcache_cli.ollama import OllamaClient
    from semcache_cli.singleflight import Claim
    from semcache_cli.storage.port import Store
    from semcache_cli.vectors import Calibration

# How many nearest neighbours the semantic layer considers before giving up: enough
# to step past an expired best match to a live one just below it.
SEMANTIC_CANDIDATES = 5


@dataclass
class AskRequest:
    query: str
    scope: policy.Scope
    embed_model: str
    threshold: float
    min_confidence: float
    ttl: float | None
    max_query_chars: int = 4_000_000
    guards: tuple[str, ...] = ()  # answer-safety guards on semantic candidates
    margin: float = 0.0  # margin rule: a runner-up this close makes a semantic hit a miss
    scale: str = "calibrated"  # or "cosine": the threshold is on the raw cosine
    metadata: dict[str, Any] | None = None  # stored with a new answer (replay: its label)
    wait_s: float = 300.0  # longest wait for another process answering the same question
    lookup: bool = True  # False: --no-cache, the bypass path
    store: bool = True  # False: --no-store
    cache_only: bool = False
    runtime_options: dict[str, Any] = field(default_factory=dict)  # sent to Ollama, no part of the scope
    # How a miss is answered: (query, request, on_token) -> ollama.Generation. None: the
    # engine's own chat call; `semcache serve` forwards the client's request instead.
    generate: Callable[[str, AskRequest, Callable[[str], None]], Any] | None = None
    semantic: bool = True  # False: the exact layer only (no embedding, no vector stored)


@dataclass
class Outcome:
    response: str
    source: str  # exact | semantic | model
    entry_id: int | None
    similarity: float | None  # calibrated: of the served entry, or of the best candidate on a miss
    confidence: float | None
    miss_reason: str | None
    model: str
    embed_model: str
    namespace: str
    created_at: float | None
    expires_at: float | None
    stored: bool = False
    saved_s: float | None = None  # what the served answer originally cost
    saved_tokens: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # of the served entry
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cosine: float | None = None  # the raw cosine beside `similarity`
    calibration: Scale | None = None  # the embedding model's scale, as the lookup found it
    miss_detail: str | None = None  # a guard's words, when one explains the miss

    @property
    def hit(self) -> bool:
        return self.source in ("exact", "semantic")


def validate_query(query: str, max_chars: int) -> str:
    if "\x00" in query:
        raise UsageError("the question contains a NUL byte")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, as argv hands them to Python
        raise UsageError("the question is not valid UTF-8") from None
    text = policy.trim(query)
    if not text:
        raise UsageError('the question is empty: semcache ask "your question"')
    if len(text) > max_chars:
        raise UsageError(f"the question is {len(text):,} characters, over the limit of {max_chars:,} (max_query_chars)")
    return text


def _check_text(req: AskRequest) -> None:
    """Every text of the request that reaches the store is text a store can keep (no
    NUL, no lone surrogate), checked before the model is called: callers check their own
    input, and this keeps a caller that did not from paying for an answer the store
    then refuses."""
    from semcache_cli.config import valid_text

    for value, what in ((req.scope.namespace, "the namespace"), (req.scope.model, "the model"),
                        (req.scope.system, "the system prompt"), (req.embed_model, "the embedding model"),
                        *((v, f"the metadata's {k!r}") for k, v in (req.metadata or {}).items())):
        if isinstance(value, str):
            valid_text(value, what)


def embedding_text(embed_model: str, query: str) -> str:
    """nomic-embed-text was trained with task prefixes; Ollama does not add them."""
    if policy.canonical_model(embed_model).startswith("nomic-embed-text"):
        return f"search_query: {query}"
    return query


class _Timer:
    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round((now - self.mark) * 1000, 3)
        self.mark = now

    def total(self) -> dict[str, float]:
        return {**self.laps, "total": round((time.perf_counter() - self.start) * 1000, 3)}


class Judged(NamedTuple):
    """A stored entry offered by a layer, with the reuse gate's verdict on it."""

    source: str  # exact | semantic
    entry: Entry
    similarity: float  # calibrated: what the gate judges
    verdict: policy.Verdict
    cosine: float  # raw, shown beside it


class Decision(NamedTuple):
    served: Judged | None
    miss_reason: str | None
    similarity: float | None  # of the served entry, or what explains the miss
    confidence: float | None
    cosine: float | None = None
    detail: str | None = None  # a guard's words, when one explains the miss


class Scale(NamedTuple):
    """The embedding model's calibrated scale as one lookup met it: `state` is ready,
    cosine (the user chose the raw cosine), calibrating (too few vectors of the model
    stored yet: no semantic hits) or unusable (vectors that cannot tell questions apart:
    no semantic hits either)."""

    state: str
    vectors: int | None  # the model's stored vectors, counted while it is calibrating
    needed: int
    estimated_from: int | None = None  # the vectors the scale was made from
    median: float | None = None
    problem: str | None = None
    made_from: dict[str, int] | None = None  # reference questions and the cache's own distinct vectors

    @property
    def semantic(self) -> bool:
        """Semantic hits can be made on it."""
        return self.state in ("ready", "cosine")


def decide(candidates: Iterable[Judged], margin: float = 0.0) -> Decision:
    """What ask does with its candidates, best first: serve the first one the gate
    accepts; otherwise the first rejected one explains the miss. A candidate below the
    threshold ends the search (the rest are lower still). Margin rule: a semantic winner
    whose runner-up is within `margin`, acceptable too, and another entry with another
    answer is too close to call: a miss ("ambiguous")."""
    rejected: Judged | None = None
    best_semantic: Judged | None = None
    remaining = iter(candidates)
    for judged in remaining:
        if judged.source == "semantic" and best_semantic is None:
            best_semantic = judged
        if judged.verdict.serve:
            if judged.source == "semantic" and margin > 0:
                runner_up = next(remaining, None)
                if runner_up is not None and _too_close(judged, runner_up, margin):
                    return Decision(None, policy.AMBIGUOUS, judged.similarity, judged.verdict.confidence, judged.cosine)
            return Decision(judged, None, judged.similarity, judged.verdict.confidence, judged.cosine)
        if judged.verdict.reason == policy.NO_MATCH:
            break
        rejected = rejected or judged
    if rejected is not None:
        return Decision(None, rejected.verdict.reason, rejected.similarity, rejected.verdict.confidence,
                        rejected.cosine, rejected.verdict.detail)
    if best_semantic is not None:
        return Decision(None, policy.NO_MATCH, best_semantic.similarity, None, best_semantic.cosine)
    return Decision(None, policy.NO_MATCH, None, None)


def calibrating_said(miss_reason: str | None, calibrating: bool) -> str | None:
    """A miss with nothing near enough says why, when no semantic hit could be made yet:
    the embedding model's scale is still calibrating."""
    return policy.CALIBRATING if miss_reason == policy.NO_MATCH and calibrating else miss_reason


def _too_close(best: Judged, runner_up: Judged, margin: float) -> bool:
    return (runner_up.source == "semantic" and runner_up.verdict.serve and runner_up.entry.id != best.entry.id
            and policy.tied(best.similarity, runner_up.similarity, margin)
            and policy.normalise(runner_up.entry.response) != policy.normalise(best.entry.response))


def judge(source: str, entry: Entry, similarity: float, req: AskRequest, now: float,
          cosine: float | None = None) -> Judged:
    """The reuse gate's verdict on one candidate (its calibrated similarity; the raw
    cosine rides along), with the answer-safety guards on the two questions for a
    semantic one: the same for ask, inspect and replay's simulation."""
    candidate = policy.Candidate(entry.id, similarity, entry.created_at, entry.ttl, entry.response, entry.done_reason)
    finding = None
    if source == "semantic" and req.guards and similarity >= req.threshold:
        from semcache_cli import guards

        finding = guards.check(req.query, entry.query, req.guards)
    verdict = policy.judge(candidate, now, req.min_confidence, req.threshold, finding.guard if finding else None,
                           finding.words if finding else None)
    if source == "semantic" and cosine is not None and verdict.serve and req.scale != "cosine":
        from semcache_cli.vectors import COSINE_FLOOR

        if cosine < COSINE_FLOOR:
            verdict = policy.Verdict(False, policy.NO_MATCH, verdict.confidence)  # whatever the scale says
    return Judged(source, entry, similarity, verdict, similarity if cosine is None else cosine)


def rescore(neighbours: Iterable[Neighbour], query: Sequence[float], scale: Calibration,
            limit: int) -> list[tuple[int, float, float]]:
    """(entry id, calibrated similarity, raw cosine) of the best `limit` neighbours by the
    calibrated score, from their raw cosines and projections: the one ranking of ask,
    inspect and replay's simulation."""
    from semcache_cli import vectors

    mine = vectors.projections(query, scale.directions)
    scored = [(n.id, vectors.calibrated(n.cosine, mine, n.projections, scale), n.cosine) for n in neighbours]
    return sorted(scored, key=lambda row: (-row[1], -row[2]))[:limit]


@dataclass
class Explanation:
    """What `ask` would do with a query now, without doing it (inspect --similar)."""

    decision: Decision
    exact: Judged | None
    neighbours: list[Judged]
    considered: int  # how many of the neighbours ask looks at
    scale: Scale | None = None  # the embedding model's, None without a semantic layer


class _Asking:
    """One ask in progress: its request and everything the steps share. A plain class:
    a dataclass costs every process ~0.3 ms to define."""

    __slots__ = ("req", "query", "scope_hash", "key", "now", "log", "on_token", "vector", "warnings", "timer", "scale",
                 "unembedded", "detail")

    def __init__(self, req: AskRequest, query: str, scope_hash: str, key: str, now: float, log: LogRow,
                 on_token: Callable[[str], None], vector: Any = None) -> None:
        self.req, self.query, self.scope_hash, self.key, self.now = req, query, scope_hash, key, now
        self.log = log  # the request-log row so far
        self.on_token = on_token
        self.vector = vector
        self.warnings: list[str] = []
        self.timer = _Timer()
        self.scale: Scale | None = None
        self.unembedded: str | None = None  # why the question has no vector: a miss reason of its own
        self.detail: str | None = None  # the words of a guard that explains the miss

    def log_row(self, path: str, **values: Any) -> LogRow:
        return self.log._replace(path=path, latency_ms=self.timer.total()["total"], **values)


REFERENCE_CLAIM_SCOPE = "reference"  # claims on embedding the reference questions (no scope hash is this)


class Engine:
    """The pipeline over one store, which it owns: `with open_engine(settings) as engine`
    closes the store and the Ollama connection."""

    def __init__(
        self,
        store: Store,
        client_factory: Callable[[], OllamaClient],
        clock: Callable[[], float] | None = None,
        warn: Callable[[str], None] = lambda _: None,
        read_only: bool = False,
        note: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.read_only = read_only  # explanations: a scale made for one is not kept
        self._client_factory = client_factory
        self._client: OllamaClient | None = None
        self.clock = clock or store.now  # the store's clock: a shared store's server's
        self.warn = warn
        self.note = note  # what a person may like to know, with nothing to fix (-q silences it)
        self._unreadable: set[int] = set()  # entries already warned about
        self._scales: dict[tuple[str, int], Calibration | None] = {}  # per (embedding model, dims)
        self._said_unusable: set[tuple[str, int]] = set()
        self._checked: set[tuple[str, int]] = set()  # kept scales checked against the store
        self._reference_failed: set[tuple[str, int]] = set()  # said once, not tried again
        self.store_read_only = False  # a write was refused: the store is only read from now on

    def _spare(self, write: Callable[[], Any], skipped: str) -> Any:
        """A write an ask can do without (counting a hit, the request log, a claim, an
        answer, a scale). On a store this process may only read (a read-only file or
        mount, a SELECT-only role), it is skipped, said once; None then."""
        if self.store_read_only:
            return None
        try:
            return write()
        except StoreReadOnly as exc:
            self.store_read_only = True
            self.warn(f"{exc}; {skipped}")
            return None

    @property
    def client(self) -> OllamaClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def close(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
        finally:
            self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, req: AskRequest, on_token: Callable[[str], None] = lambda _: None, vector: Any = None) -> Outcome:
        """One ask. `vector`: the query's unit vector when the caller embedded it already
        (replay batches embeddings); otherwise it is embedded here when needed."""
        query = validate_query(req.query, req.max_query_chars)
        _check_text(req)
        scope_hash, key, now = req.scope.hash, policy.exact_key(query), self.clock()
        # --no-store keeps nothing of the question: its log row counts the ask, without
        # the question's text or its key (a hash of it, which a guess could be checked on).
        log = LogRow(at=now, path="", namespace=req.scope.namespace, model=req.scope.model,
                     embed_model=req.embed_model, scope=scope_hash, exact_key=key if req.store else None,
                     query=query if req.store else None)
        ask = _Asking(req, query, scope_hash, key, now, log, on_token, vector)

        exact = self._exact(req, scope_hash, key, now) if req.lookup else None
        ask.timer.lap("exact")
        if exact is not None and exact.verdict.serve:
            return self._served(ask, exact)

        if ask.vector is None and req.semantic and (req.lookup or req.store):
            try:
                ask.vector, ask.unembedded = self._embed(query, req, ask.warnings)
            except SemcacheError as exc:
                self._failed(ask, exc, miss_reason=exact.verdict.reason if exact else None)
                raise
            ask.timer.lap("embed")

        neighbours: Iterable[Judged] = ()
        if ask.vector is not None:
            ask.scale = self._scale(req.embed_model, len(ask.vector), req.scale)
        if req.lookup and ask.vector is not None and ask.scale is not None and ask.scale.semantic:
            neighbours = self._neighbours(req, scope_hash, ask.vector, now, SEMANTIC_CANDIDATES)
        decision = decide(itertools.chain([exact] if exact else [], neighbours), req.margin)
        if req.lookup:
            ask.timer.lap("semantic")
        if decision.served is not None:
            return self._served(ask, decision.served)

        miss_reason = calibrating_said(decision.miss_reason if req.lookup else policy.BYPASS,
                                       ask.scale is not None and ask.scale.state == "calibrating")
        if miss_reason == policy.NO_MATCH and ask.unembedded is not None:
            miss_reason = ask.unembedded  # not "nothing near enough": the semantic layer could not look
        ask.log = ask.log._replace(miss_reason=miss_reason, similarity=decision.similarity,
                                   confidence=decision.confidence, cosine=decision.cosine)
        ask.detail = decision.detail
        if req.cache_only:
            self._spare(lambda: self.store.log_request(ask.log_row("miss")), "the miss was not logged")
            raise CacheOnlyMiss(f"no cached answer ({miss_reason})", miss_reason)

        claim: Claim | None = None
        failing = False
        try:
            if req.lookup and req.store and not self.store_read_only:
                from semcache_cli.singleflight import Claim

                claim = Claim(self.store, scope_hash, key)
                answered = self._spare(functools.partial(self._claim_or_wait, req, claim),
                                       "answered by the model, not stored")
                if answered is not None:
                    return self._served(ask, answered)
            return self._answer(ask, claim if claim is not None and claim.held else None)
        except BaseException:
            failing = True
            raise
        finally:
            if claim is not None:  # held from before its row is committed, so a signal cannot strand it
                try:  # unless the store released it with the answer: after a failure
                    claim.release()
                except StoreReadOnly:
                    pass  # never taken: the store refused it (said already)
                except SemcacheError:
                    # The store failed already (a full disk, a lost server): that error is the
                    # one to report; the lease (or, on this host, the pid) frees the claim.
                    if not failing:
                        raise

    def _served(self, ask: _Asking, judged: Judged) -> Outcome:
        entry = judged.entry
        outcome = self._outcome(ask, entry.response, judged.source, entry, judged.similarity,
                                judged.verdict.confidence, None)
        outcome.saved_s, outcome.saved_tokens, outcome.metadata = entry.generation_s, entry.saved_tokens, entry.metadata
        outcome.cosine = judged.cosine
        self._spare(lambda: self.store.record_hit(entry.id, ask.now, ask.log._replace(
            path=judged.source, entry_id=entry.id, similarity=judged.similarity, cosine=judged.cosine,
            confidence=judged.verdict.confidence, latency_ms=outcome.timings_ms["total"],
            saved_s=entry.generation_s, saved_tokens=entry.saved_tokens,
        )), "the answer was served, its hit not counted")
        return outcome

    def _failed(self, ask: _Asking, exc: SemcacheError, **values: Any) -> None:
        self._spare(lambda: self.store.log_request(ask.log_row("error", error=str(exc), **values)),
                    "the error was not logged")

    def _answer(self, ask: _Asking, claim: Claim | None) -> Outcome:
        """The miss path: ask the model, store a clean answer, log the request."""
        req = ask.req
        try:
            generation = self._storable((req.generate or self._generate)(ask.query, req, ask.on_token))
        except SemcacheError as exc:
            self._failed(ask, exc)
            raise
        ask.timer.lap("generate")

        created = self.clock()
        outcome = self._outcome(ask, generation.text, "model", None, ask.log.similarity, ask.log.confidence,
                                ask.log.miss_reason)
        outcome.cosine, outcome.miss_detail = ask.log.cosine, ask.detail
        outcome.created_at = created
        outcome.expires_at = policy.expires_at(created, req.ttl)
        request_row = ask.log._replace(path="model", latency_ms=outcome.timings_ms["total"])
        if req.store and not self.store_read_only:
            vector = ask.vector
            outcome.entry_id = self._spare(lambda: self.store.store_answer(
                NewEntry(
                    scope=ask.scope_hash, exact_key=ask.key, namespace=req.scope.namespace,
                    model=policy.canonical_model(req.scope.model), system=req.scope.system, options=req.scope.options,
                    format=req.scope.format, query=ask.query, response=generation.text,
                    created_at=created, ttl=req.ttl, prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                    generation_s=generation.total_s, done_reason=generation.done_reason,
                    embed_model=policy.canonical_model(req.embed_model) if vector is not None else None,
                    vector=vector, metadata=req.metadata,
                ),
                request_row,
                claim.owner if claim is not None else None,
            ), "answered by the model, not stored")
            entry_id = outcome.entry_id
            if entry_id is not None:
                if claim is not None:
                    claim.released_with_answer()
                outcome.stored = True
                if vector is not None:
                    self._spare(lambda: self._grown(req.embed_model, len(vector), entry_id),
                                "the similarity scale was not kept")
            ask.timer.lap("store")
        else:
            self._spare(lambda: self.store.log_request(request_row), "the request was not logged")
        outcome.timings_ms = ask.timer.total()
        return outcome

    def _claim_or_wait(self, req: AskRequest, claim: Claim) -> Judged | None:
        """Single-flight: take the claim on this question, or wait for the process holding
        it and serve its answer. None: answer it (holding the claim, or not when the wait
        ran out). The caller releases the claim."""
        from semcache_cli.singleflight import POLL_S

        scope_hash, key = claim.scope, claim.key
        deadline = time.monotonic() + req.wait_s
        delays = iter(POLL_S)
        while True:
            if claim.try_take():
                # The answer may have been stored between our lookup and the claim.
                exact = self._exact(req, scope_hash, key, self.clock())
                return exact if exact is not None and exact.verdict.serve else None
            if time.monotonic() >= deadline:
                self.warn(f"waited {req.wait_s:.0f} s for another semcache process asking the same question; "
                          "asking the model directly")
                return None
            time.sleep(next(delays, POLL_S[-1]))
            exact = self._exact(req, scope_hash, key, self.clock())
            if exact is not None and exact.verdict.serve:
                return exact

    # -- steps -------------------------------------------------------------------------

    def explain(self, req: AskRequest, limit: int, vector: Any = None, semantic: bool = True) -> Explanation:
        """The exact candidate and the `limit` nearest entries of the scope, each judged
        as ask would judge it now, and ask's decision. Reads only: no hit is counted,
        nothing is logged. An embedding failure is an error here, not a degradation, but a
        question longer than the embedding model's context is looked up as ask does it:
        exactly; semantic=False: the exact layer only (a question without a usable vector)."""
        query = validate_query(req.query, req.max_query_chars)
        scope_hash, now = req.scope.hash, self.clock()
        exact = self._exact(req, scope_hash, policy.exact_key(query), now)
        too_long = False
        if vector is None and semantic:
            try:
                vector = self._embed_vector(query, req)
            except EmbedInputTooLong:
                too_long, semantic = True, False
        scale = self._scale(req.embed_model, len(vector), req.scale) if semantic else None
        neighbours = list(self._neighbours(req, scope_hash, vector, now, max(limit, SEMANTIC_CANDIDATES))) \
            if scale is not None and scale.semantic else []
        considered = neighbours[:SEMANTIC_CANDIDATES]
        decision = decide(itertools.chain([exact] if exact else [], considered), req.margin)
        decision = decision._replace(miss_reason=calibrating_said(
            decision.miss_reason, scale is not None and scale.state == "calibrating"))
        if too_long and decision.miss_reason == policy.NO_MATCH:
            decision = decision._replace(miss_reason=policy.TOO_LONG_TO_EMBED)
        return Explanation(decision, exact, neighbours[:limit], len(considered), scale)

    def _exact(self, req: AskRequest, scope_hash: str, key: str, now: float) -> Judged | None:
        entry = self._readable(lambda: self.store.find_exact(scope_hash, key))
        return judge("exact", entry, 1.0, req, now) if entry is not None else None

    def _readable(self, read: Callable[[], Entry | None]) -> Entry | None:
        """An entry, or None for one whose stored fields cannot be read: a damaged entry
        is a miss, said once (the answer stored next replaces it), never a broken ask."""
        try:
            return read()
        except UnreadableEntry as exc:
            if exc.entry_id not in self._unreadable:
                self._unreadable.add(exc.entry_id)
                self.warn(f"{exc}; treated as a miss (semcache purge --id {exc.entry_id} removes it)")
            return None

    def _neighbours(self, req: AskRequest, scope_hash: str, vector: Any, now: float, limit: int) -> Iterator[Judged]:
        """The nearest entries of the scope by the calibrated score (or the cosine, when
        the user chose it), best first, judged lazily: ask stops reading entries at the
        first one it serves. The raw top RERANK by cosine are scored (measured on CLINC
        and anisotropic variants of it: a calibrated nearest at 0.80 or more was always
        among them)."""
        from semcache_cli import vectors

        embed_model = policy.canonical_model(req.embed_model)
        if req.scale == "cosine":
            ranked = [(n.id, n.cosine, n.cosine) for n in self.store.nearest(scope_hash, embed_model, vector, limit)]
        else:
            scale = self._scales[(embed_model, len(vector))]
            assert scale is not None and scale.ready
            found = self.store.nearest(scope_hash, embed_model, vector, max(vectors.RERANK, limit), scale.directions)
            ranked = rescore(found, vector, scale, limit)
        for entry_id, similarity, cosine in ranked:
            entry = self._readable(functools.partial(self.store.get, entry_id))
            if entry is not None:  # None: purged since the vectors were read, or unreadable
                yield judge("semantic", entry, similarity, req, now, cosine)

    def _scale(self, embed_model: str, dims: int, mode: str) -> Scale:
        """The embedding model's calibrated scale, read once per engine and checked against
        the store: ready, still calibrating (no reference vectors and too few of its own
        stored), or unusable (said once). Made at the model's first semantic lookup, from
        the reference questions (embedded then, once). The mode "cosine" needs no scale,
        but a model known to be unusable stays off."""
        from semcache_cli import vectors
        from semcache_cli.storage import scales

        key = (policy.canonical_model(embed_model), dims)
        kept = scale = self._kept(key)
        needed = vectors.CALIBRATION_MIN_VECTORS
        if scale is not None and scale.ready and key not in self._checked:
            self._checked.add(key)
            top = self.store.top_entry_id()
            if scale.vectors > top or scale.checked_at > top:  # counts the store cannot have: made again
                scale = None
        if scale is None or not scale.ready:
            count = self.store.vector_count(*key)
            if mode == "cosine" and count < needed:
                return Scale("cosine", count, needed)
            scale = self._scales[key] = self._catch_up(key, kept, count, bootstrap=mode != "cosine")
            if not scale.ready:
                return Scale("cosine" if mode == "cosine" else "calibrating", count, needed)
        made_from = scales.made_from(scale)
        if scale.problem is not None:
            if key not in self._said_unusable:
                self._said_unusable.add(key)
                self.warn(f"{key[0]} cannot tell questions apart ({scale.problem}): semantic layer off for it "
                          "(exact hits only); choose another embedding model")
            return Scale("unusable", None, needed, scale.vectors, scale.median, scale.problem, made_from)
        return Scale("cosine" if mode == "cosine" else "ready", None, needed, scale.vectors, scale.median, None,
                     made_from)

    def _catch_up(self, key: tuple[str, int], stored: Calibration | None, count: int,
                  bootstrap: bool = True) -> Calibration:
        """A scale for a model that has none kept, or none usable (a new model, its row
        lost or damaged, too few vectors before the reference questions): made now from
        the reference vectors (embedded first if none are kept, when `bootstrap`) and the
        cache's own, and kept unless this engine only reads."""
        from semcache_cli import vectors
        from semcache_cli.storage import scales

        reference = scales.reference_rows(self.store, *key)
        if reference is None and bootstrap and not scales.reference_failed(self.store, *key):
            reference = self._reference(key)
        if reference is None and count < vectors.CALIBRATION_MIN_VECTORS:
            return scales.cold(key[1], count, 0)
        top = self.store.top_entry_id()
        scale = scales.estimated(self.store, *key, top, count, reference)
        if self.read_only:
            return scale
        kept = self._spare(lambda: self.store.advance_calibration(key[0], scale, stored),
                           "the similarity scale was not kept")
        if kept is False:
            latest = self.store.calibration(*key)
            if latest is not None and latest.ready:
                return latest  # another process's, made meanwhile
            # the row there could not be read: replaced
            self._spare(lambda: self.store.save_calibration(key[0], scale), "the similarity scale was not kept")
        return scale

    def _reference(self, key: tuple[str, int]) -> Any:
        """The reference questions embedded with the model, in one batched call, and kept
        (unless this engine only reads); None, said once, when the embedding model fails
        on them: the model then calibrates from its own vectors, as before them. One
        process at a time embeds them (a claim, as for a question): the others, a replay's
        workers or parallel asks on a new cache, wait for its rows rather than embed them
        all again."""
        from semcache_cli.singleflight import POLL_S, Claim
        from semcache_cli.storage import scales

        if key in self._reference_failed:
            return None
        if self.read_only or self.store_read_only:
            return self._embed_reference(key)
        claim = Claim(self.store, REFERENCE_CLAIM_SCOPE, f"{key[0]}/{key[1]}")
        deadline, delays = time.monotonic() + self.client.timeout, iter(POLL_S)
        try:
            while self._spare(claim.try_take, "the reference questions embedded here too") is False:
                if time.monotonic() >= deadline:
                    break  # the holder is stuck: embed them here
                time.sleep(next(delays, POLL_S[-1]))
                kept = scales.reference_rows(self.store, *key)
                if kept is not None:
                    return kept
                if scales.reference_failed(self.store, *key):
                    self._reference_failed.add(key)
                    return None
            kept = scales.reference_rows(self.store, *key)  # kept between our look and the claim
            return kept if kept is not None else self._embed_reference(key)
        finally:
            if claim.held:
                self._spare(claim.release, "the claim on the reference questions runs out by itself")

    def _embed_reference(self, key: tuple[str, int]) -> Any:
        from semcache_cli import vectors
        from semcache_cli.storage import scales

        fallback = f"its semantic hits start at {vectors.CALIBRATION_MIN_VECTORS} stored questions"
        started = time.perf_counter()
        questions = scales.reference_questions()
        try:
            matrix = scales.reference_matrix(
                self.client.embed(key[0], [embedding_text(key[0], q) for q in questions]), key[1])
            problem = None if matrix is not None else "it gave them too few usable vectors"
        except SemcacheError as exc:
            matrix, problem = None, str(exc)
        if matrix is None:  # kept as failed: not tried again by every ask, until `semcache calibrate`
            self._reference_failed.add(key)
            if not self.read_only:
                self._spare(lambda: scales.keep_reference(self.store, *key, None), "the failure was not kept")
            self.warn(f"could not calibrate {key[0]} on the reference questions ({problem}); {fallback}")
            return None
        if len(matrix) < vectors.REFERENCE_LEAST:  # one vector for every question: no background to
            self._reference_failed.add(key)  # calibrate on; its own vectors will say it is unusable at 32
            if not self.read_only:
                scales.keep_reference(self.store, *key, None)
            return None
        if not self.read_only:
            self._spare(lambda: scales.keep_reference(self.store, *key, matrix), "their vectors were not kept")
        self.note(f"calibrated {key[0]} from {len(questions)} reference questions, embedded once in "
                  f"{time.perf_counter() - started:.1f} s")
        return matrix

    def recalibrate(self) -> list[tuple[str, Calibration]]:
        """Every model's reference questions embedded again (kept ones stand when the model
        fails on them now) and its scale made again: `semcache calibrate`."""
        from semcache_cli.storage import scales

        made = []
        for group in self.store.vector_groups():
            self._reference((group.embed_model, group.dims))
            made.append((group.embed_model, scales.rebuild(self.store, group.embed_model, group.dims, group.top_id,
                                                           group.vectors)))
        self._scales.clear()
        return made

    def _grown(self, embed_model: str, dims: int, entry_id: int) -> None:
        """The model's scale again when the store may have grown to its next milestone."""
        from semcache_cli.storage import scales

        key = (policy.canonical_model(embed_model), dims)
        self._scales[key] = scales.grown(self.store, *key, entry_id, self._kept(key))

    def _kept(self, key: tuple[str, int]) -> Calibration | None:
        """The model's scale as the store keeps it, read once per engine."""
        if key not in self._scales:
            self._scales[key] = self.store.calibration(*key)
        return self._scales[key]

    def _outcome(self, ask: _Asking, response: str, source: str, entry: Entry | None,
                 similarity: float | None, confidence: float | None, miss_reason: str | None) -> Outcome:
        req = ask.req
        return Outcome(
            response=response, source=source, entry_id=entry.id if entry else None,
            similarity=similarity, confidence=confidence, miss_reason=miss_reason,
            # Ollama's own spelling (name:tag, lower case), as stored and as every command shows it
            model=policy.canonical_model(req.scope.model), embed_model=policy.canonical_model(req.embed_model),
            namespace=req.scope.namespace,
            created_at=entry.created_at if entry else None,
            expires_at=entry.expires_at if entry else None,
            warnings=ask.warnings, timings_ms=ask.timer.total(), calibration=ask.scale,
        )

    def _embed_vector(self, query: str, req: AskRequest) -> Any:
        from semcache_cli import vectors

        values = self.client.embed(req.embed_model, [embedding_text(req.embed_model, query)])[0]
        if values is None:
            raise OllamaError(f"{req.embed_model} gave this question an unusable vector (all zeros, or not finite)")
        try:
            return vectors.unit_vector(values)
        except ValueError as exc:
            raise OllamaError(f"the embedding of {req.embed_model} is unusable: {exc}") from None

    def _embed(self, query: str, req: AskRequest, warnings: list[str]) -> tuple[Any, str | None]:
        """The query's unit vector, or None and the miss reason that says why: a question
        longer than the model's context (no warning: long input is answered and cached
        exactly, as documented) or a failure (with a warning)."""
        try:
            return self._embed_vector(query, req), None
        except EmbedInputTooLong:
            return None, policy.TOO_LONG_TO_EMBED
        except OllamaUnreachable:
            if not req.cache_only:
                raise  # the model call would fail the same way: report it once
            message = "cannot reach Ollama to embed the question; semantic layer skipped"
        except ModelNotFound as exc:
            message = f"embedding model '{exc.model}' not found: run `ollama pull {exc.model}`; semantic layer skipped"
        except OllamaError as exc:
            message = f"embedding failed ({exc}); semantic layer skipped"
        warnings.append(message)
        self.warn(message)
        return None, policy.EMBED_FAILED

    def _generate(self, query: str, req: AskRequest, on_token: Callable[[str], None]) -> Any:
        messages = []
        if req.scope.system:
            messages.append({"role": "system", "content": req.scope.system})
        messages.append({"role": "user", "content": query})
        options = {**req.scope.options, **req.runtime_options}
        return self.client.chat(req.scope.model, messages, options, req.scope.format, on_token)

    @staticmethod
    def _storable(generation: Any) -> Any:
        """The generation, when it may be stored and served; GenerationFailed otherwise."""
        if generation.done_reason == "length":
            raise GenerationFailed("the answer was cut off at the length limit (done_reason=length); nothing was stored")
        problem = policy.poison_reason(generation.text, generation.done_reason)
        if problem:
            raise GenerationFailed(f"the model gave an unusable answer ({problem}); nothing was stored")
        return generation


def open_engine(settings: Settings, warn: Callable[[str], None] = lambda _: None, read_only: bool = False,
                create: bool = True, note: Callable[[str], None] = lambda _: None) -> Engine:
    """The settings' store and (lazily) the Ollama client, wired into an engine that owns
    both. read_only: for explanations, which never create or change a store; create=False:
    a store that must exist."""
    from semcache_cli.storage import open_store

    store = open_store(settings, warn=warn, create=create, read_only=read_only)
    return Engine(store, lambda: _client(settings), warn=warn, read_only=read_only, note=note)


def _client(settings: Settings) -> OllamaClient:
    from semcache_cli.ollama import OllamaClient

    return OllamaClient(settings.ollama_url, settings.timeout)


def request_from(settings: Settings, query: str, format: Any = None, *, lookup: bool = True, store: bool = True,
                 cache_only: bool = False) -> AskRequest:
    return AskRequest(
        query=query,
        scope=policy.Scope(settings.namespace, settings.model, settings.system, settings.scope_options, format),
        runtime_options=settings.runtime_options,
        embed_model=settings.embed_model,
        threshold=settings.threshold,
        min_confidence=settings.min_confidence,
        ttl=settings.ttl,
        max_query_chars=settings.max_query_chars,
        guards=settings.guards,
        margin=settings.margin,
        scale=settings.scale,
        wait_s=settings.timeout,
        lookup=lookup,
        store=store,
        cache_only=cache_only,
    )


def run_ask(
    settings: Settings,
    query: str,
    format: Any = None,
    *,
    lookup: bool = True,
    store: bool = True,
    cache_only: bool = False,
    on_token: Callable[[str], None] | None = None,
    warn: Callable[[str], None] = lambda _: None,
    note: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """One `semcache ask`: open, ask, close. The cache is an optimisation: when its store
    turns out damaged (at opening, or during the lookup, before any of the answer was
    written), the model answers without it, with one warning, unless the settings ask
    for strictness (strict_cache) or for the cache alone (cache_only)."""
    request = request_from(settings, query, format, lookup=lookup, store=store, cache_only=cache_only)
    validate_query(request.query, request.max_query_chars)  # before touching the database
    on_token = on_token or (lambda _: None)
    notes: list[str] = []  # said once the ask succeeded: a failed ask says its error alone
    written = False

    def tokens(token: str) -> None:
        nonlocal written
        written = True
        on_token(token)

    try:
        with open_engine(settings, warn, note=notes.append) as engine:
            outcome = engine.ask(request, tokens)
    except StoreDamaged as exc:
        if settings.strict_cache or cache_only or written:
            raise
        return without_cache(settings, request, on_token, warn, exc)
    for said in notes:
        note(said)
    return outcome


def without_cache(settings: Settings, request: AskRequest, on_token: Callable[[str], None],
                  warn: Callable[[str], None], damage: StoreDamaged) -> Outcome:
    """The model's answer, with the cache left out: looked up in nothing, stored nowhere."""
    from dataclasses import replace

    from semcache_cli.storage import scratch_store

    warn(f"{damage}; the cache was not used: the model answered, nothing was stored")
    engine = Engine(scratch_store(settings.db), lambda: _client(settings), warn=warn)
    with engine:
        outcome = engine.ask(replace(request, lookup=False, store=False), on_token)
    outcome.miss_reason = policy.CACHE_UNUSABLE
    return outcome
