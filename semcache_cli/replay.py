"""`semcache replay`: many queries through the cache at once.

Three modes share one input parser and one report:
- live: every query goes through `Engine.ask` (the same pipeline as `ask`), embeddings
  batched through /api/embed's list input, queries on N worker processes, each with
  its own store connection (live_replay.py). Single-flight keeps duplicate questions
  to one call.
- dry run: `Engine.explain` for every query: reads only, no model call, no write.
- simulate: the insert-on-miss protocol of ../shared/data/README.md in memory, never
  the user's store and never a model call. Only the embeddings come from Ollama. Every
  query's candidates are judged and decided by the engine's own `judge` and `decide`,
  so the rules are the ones `ask` applies; the nearest-neighbour search is done in
  blocks (one matrix product against what was stored before the block, then the
  block's own earlier misses) so 22,500 queries take seconds, with exactly the
  sequential result.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from semcache_cli import policy
from semcache_cli.config import valid_text
from semcache_cli.engine import (
    SEMANTIC_CANDIDATES,
    AskRequest,
    Judged,
    calibrating_said,
    decide,
    judge,
    open_engine,
    request_from,
)
from semcache_cli.errors import UsageError
from semcache_cli.live_replay import LiveEmbeddings, run_live
from semcache_cli.replay_core import Queries, ReplayQuery, Row, Stopped, embed_batches, settings_for, usable
from semcache_cli.storage.models import Entry
from semcache_cli.vectors import (
    CALIBRATION_SAMPLE,
    RERANK,
    Calibration,
    calibrated_many,
    distinct_rows,
    estimate_from,
    next_estimate_at,
)

if TYPE_CHECKING:
    import numpy as np

    from semcache_cli.config import Settings

SIM_BLOCK = 512
_FIELDS = ("label", "model", "system", "namespace")


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


# -- input ---------------------------------------------------------------------------------

def parse_lines(raw_lines: Iterable[bytes], max_chars: int) -> tuple[Queries, list[BadLine]]:
    """Plain text (one query a line) or JSONL (`query` or `text`, optional label, model,
    system, namespace), decided by the first non-blank line. Blank lines are skipped;
    every other line that cannot be used is reported with its number."""
    queries = Queries()
    bad: list[BadLine] = []
    jsonl: bool | None = None
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            bad.append(BadLine(number, "not valid UTF-8"))
            continue
        if not line.strip():
            continue
        if jsonl is None:
            jsonl = line.lstrip().startswith("{")
        try:
            item = _parse_json_line(number, line) if jsonl else ReplayQuery(number, line)
            queries.append(replace(item, query=_checked(item.query, max_chars)))
        except (ValueError, UsageError) as exc:
            bad.append(BadLine(number, str(exc)))
    return queries, bad


def _parse_json_line(number: int, line: str) -> ReplayQuery:
    try:
        obj = json.loads(line)
    except ValueError:
        raise ValueError("not valid JSON") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise ValueError("not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    query = obj.get("query", obj.get("text"))
    if not isinstance(query, str):
        raise ValueError('no "query" (or "text") string')
    # JSON's \\ud800 escapes make lone surrogates, which no store can encode, and \\u0000 a
    # NUL, which PostgreSQL refuses (after the model was called) and SQLite would keep:
    # either is this line's fault alone.
    valid_text(query, '"query"' if "query" in obj else '"text"')
    extra = {}
    for name in _FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f'"{name}" is not a string')
        extra[name] = valid_text(value, f'"{name}"') if value is not None else None
    return ReplayQuery(number, query, **extra)


def _checked(query: str, max_chars: int) -> str:
    if "\x00" in query:
        raise ValueError("contains a NUL byte")
    text = policy.trim(query)
    if not text:
        raise ValueError("empty query")
    if len(text) > max_chars:
        raise ValueError(f"query of {len(text):,} characters, over max_query_chars ({max_chars:,})")
    return text


def from_log(settings: Settings, since: float | None) -> Queries:
    """The logged questions in the order they were asked (bypasses and errors too: they
    are real traffic). The system prompt and options are not logged: they come from the
    current settings."""
    from semcache_cli.storage import open_store

    store = open_store(settings, read_only=True)
    queries = Queries()
    try:
        if since is not None:  # a time of this machine's clock, on the store's (a shared store's server's)
            since += store.now() - time.time()
        for row in store.request_log(since):
            if row.query is not None:
                queries.append(ReplayQuery(row.id or 0, row.query, namespace=row.namespace, model=row.model))
        return queries
    finally:
        store.close()


# -- results and report --------------------------------------------------------------------

@dataclass
class Report:
    mode: str
    threshold: float
    queries: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    miss_reasons: Counter[str] = field(default_factory=Counter)
    labelled_hits: int = 0
    correct: int = 0
    wrong: int = 0
    model_calls: int = 0
    errors: int = 0
    time_saved_s: float = 0.0
    tokens_saved: int = 0
    seconds: float = 0.0
    bad_lines: int = 0
    interrupted: bool = False

    def add(self, row: Row) -> None:
        self.queries += 1
        self.by_source[row.source] += 1
        if row.source == "model":
            self.model_calls += 1
        if row.source == "error":
            self.errors += 1
        if not row.hit and row.miss_reason:
            self.miss_reasons[row.miss_reason] += 1
        if row.hit:
            self.time_saved_s += row.saved_s or 0.0
            self.tokens_saved += row.saved_tokens or 0
        if row.correct is not None:
            self.labelled_hits += 1
            self.correct += row.correct
            self.wrong += not row.correct

    @property
    def hits(self) -> int:
        return self.by_source["exact"] + self.by_source["semantic"]

    def as_dict(self) -> dict[str, Any]:
        n = self.queries or 1
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "queries": self.queries,
            "hits": {"exact": self.by_source["exact"], "semantic": self.by_source["semantic"], "total": self.hits},
            "hit_rate": self.hits / n if self.queries else None,
            "misses": dict(self.miss_reasons),
            "model_calls": self.model_calls,
            "errors": self.errors,
            "labelled_hits": self.labelled_hits,
            "correct_hits": self.correct,
            "wrong_hits": self.wrong,
            "wrong_answer_rate": self.wrong / n if self.queries and self.labelled_hits else None,
            "precision": self.correct / self.labelled_hits if self.labelled_hits else None,
            "time_saved_s": round(self.time_saved_s, 3),
            "tokens_saved": self.tokens_saved,
            "seconds": round(self.seconds, 3),
            "queries_per_s": round(self.queries / self.seconds, 1) if self.seconds > 0 else None,
            "bad_lines": self.bad_lines,
            "interrupted": self.interrupted,
        }


def recommend(reports: list[Report], target_error: float) -> Report | None:
    """The threshold with the most hits whose wrong-answer rate stays at or under the
    target (ties: the higher, safer threshold)."""
    fitting = [r for r in reports if r.queries and r.wrong / r.queries <= target_error]
    return max(fitting, key=lambda r: (r.hits, r.threshold)) if fitting else None


# -- embeddings ----------------------------------------------------------------------------

def embed_all(client: Any, embed_model: str, texts: list[str], progress: Callable[[int], None]) -> np.ndarray:
    """Unit float32 vectors for every text, batched through /api/embed; rows of NaN for
    the texts whose vector is unusable."""
    import numpy as np

    blocks = []
    for block in embed_batches(client, embed_model, texts):
        blocks.append(block)
        progress(len(block))
    if not blocks:
        return np.empty((0, 0), dtype=np.float32)
    dims = max(block.shape[1] for block in blocks)  # a block with no usable row at all is one NaN wide
    return np.concatenate([block if block.shape[1] == dims else np.full((len(block), dims), np.nan, np.float32)
                           for block in blocks])


# -- simulate ------------------------------------------------------------------------------

def simulate(items: Sequence[ReplayQuery], blocks: Iterable[np.ndarray], settings: Settings,
             thresholds: list[float], on_row: Callable[[Row], None] = lambda _: None,
             progress: Callable[[int], None] = lambda _: None, reference: np.ndarray | None = None) -> list[Report]:
    """Insert on miss, in the given order, per scope, one simulated cache per threshold;
    nothing outside memory. `blocks` are the queries' vectors in order, a block at a time
    (embed_batches), consumed as they come: nothing holds every query's vector, and each
    row goes to on_row as it is decided, so memory grows with the entries a simulated
    cache stores, not with the queries. Each query's candidates (the exact match, then
    its nearest stored queries) are judged and decided by the engine's own `judge` and
    `decide`, as `ask` would; the scale is made from the model's `reference` vectors
    (storage.scales.reference_matrix) and the cache's own, as ask makes it, or from the
    cache's own alone (None)."""
    import numpy as np

    runs = [_Simulation(settings, threshold, reference) for threshold in thresholds]
    now, start, first = time.time(), time.perf_counter(), 0
    for block in blocks:
        members = range(first, first + len(block))
        group = [items[i] for i in members]
        keys = [policy.exact_key(item.query) for item in group]
        scopes = [_scope_key(settings_for(settings, item)) for item in group]  # answers never cross scopes
        has_vector = usable(block) if block.size else np.zeros(len(block), dtype=bool)
        vectors = np.where(has_vector[:, None], block, 0.0).astype(np.float32)
        for run in runs:
            for row in run.block(list(members), group, keys, scopes, vectors, has_vector, now):
                on_row(row)
        first += len(block)
        progress(len(block))
    for run in runs:
        run.report.seconds = time.perf_counter() - start
    return [run.report for run in runs]


def _scope_key(own: Settings) -> tuple[str | None, ...]:
    return (own.namespace, policy.canonical_model(own.model), own.system)


class _Simulation:
    """One threshold's simulated cache: its scopes, the embedding model's scale as it
    grows, the entries stored so far (as `judge` sees them) and the report."""

    def __init__(self, settings: Settings, threshold: float, reference: np.ndarray | None = None) -> None:
        self.settings, self.threshold = settings, threshold
        self.report = Report("simulate", threshold)
        self.scopes: dict[tuple[str | None, ...], _SimulatedScope] = {}
        # One per embedding model, across scopes, as the store keeps it; none on the raw cosine.
        self.scale = _OnlineScale(reference if settings.scale != "cosine" else None)
        self.entries: dict[int, Entry] = {}  # stored queries, by item index
        self.lines: dict[int, tuple[int, str | None]] = {}  # their line and label

    def block(self, members: list[int], group: list[ReplayQuery], keys: list[str],
              scopes: list[tuple[str | None, ...]], vectors: np.ndarray, has_vector: np.ndarray,
              now: float) -> Iterator[Row]:
        settings, threshold = self.settings, self.threshold
        by_scope: dict[tuple[str | None, ...], list[int]] = {}
        for pos, key in enumerate(scopes):
            by_scope.setdefault(key, []).append(pos)
        for key, positions in by_scope.items():
            own = self.scopes.setdefault(key, _SimulatedScope(vectors.shape[1]))
            own.begin([members[p] for p in positions], vectors[positions])
        requests: dict[tuple[str | None, ...], AskRequest] = {}  # one a scope: only the query changes
        for pos, item in enumerate(group):
            index, own = members[pos], self.scopes[scopes[pos]]
            at = own.position[index]
            request = requests.get(scopes[pos])
            if request is None:
                request = requests[scopes[pos]] = request_from(settings_for(settings, item), item.query)
                request.threshold = threshold
            request.query = item.query
            candidates: list[Judged] = []
            if keys[pos] in own.exact:
                candidates.append(judge("exact", self.entries[own.exact[keys[pos]]], 1.0, request, now))
            # As ask: the raw top RERANK, scored on the model's scale, the best judged in turn
            # (or the top by cosine, when chosen); without a vector, before the scale exists
            # or on an unusable model, the exact layer only.
            scale = self.scale
            cold = scale.current is None and settings.scale != "cosine"
            if has_vector[pos] and not cold and (scale.current is None or scale.current.problem is None):
                pool = _nearest(own.before[at] if own.before is not None else None, own.stored_index,
                                own.within[at, own.new_rows] if own.new_rows else None,
                                [own.block[r] for r in own.new_rows], RERANK)
                ranked = [(i, c, c) for i, c in pool[:SEMANTIC_CANDIDATES]] if settings.scale == "cosine" \
                    else scale.rescore(own.vectors[at], pool, own, SEMANTIC_CANDIDATES)
                candidates += [judge("semantic", self.entries[i], similarity, request, now, cosine)
                               for i, similarity, cosine in ranked]
            decision = decide(candidates, settings.margin)
            miss_reason = calibrating_said(decision.miss_reason, bool(has_vector[pos]) and cold)
            served = decision.served
            row = Row(item.line, item.query, item.label, served.source if served else "miss",
                      miss_reason=miss_reason, matched=served.entry.id if served else None,
                      similarity=decision.similarity, confidence=decision.confidence, cosine=decision.cosine,
                      miss_detail=decision.detail)
            if served is None:
                self.entries[index] = Entry(index, "", keys[pos], "", "", None, {}, None, item.query,
                                            f"the answer to line {item.line}", None, None, now, settings.ttl,
                                            policy.expires_at(now, settings.ttl), 0, None, None, None, None, "stop",
                                            {})
                self.lines[index] = (item.line, item.label)
                own.exact[keys[pos]] = index
                if has_vector[pos]:  # stored without a vector: the exact layer finds it, nothing else
                    scale.stored(own, own.store(at))
            else:
                row.matched, row.matched_label = self.lines[served.entry.id]
            row.threshold = threshold
            self.report.add(row)
            yield row
        for key in by_scope:
            self.scopes[key].end()


class _SimulatedScope:
    """One scope of a simulated cache: its stored vectors (rows, grown as it stores, and
    the item each is), its exact keys, and the block of queries being decided."""

    def __init__(self, dims: int) -> None:
        import numpy as np

        self.stored = np.empty((64, dims), dtype=np.float32)
        self.rows = 0  # rows of `stored` in use
        self.stored_index: list[int] = []  # the item of each row stored before this block
        self.exact: dict[str, int] = {}
        self.row_of: dict[int, int] = {}  # item index -> its row

    def begin(self, members: list[int], vectors: np.ndarray) -> None:
        import numpy as np

        m = len(self.stored_index)
        if not self.rows and self.stored.shape[1] != vectors.shape[1]:  # the first blocks had no vector
            self.stored = np.empty((64, vectors.shape[1]), dtype=np.float32)
        self.block, self.vectors = members, vectors
        self.position = {index: pos for pos, index in enumerate(members)}
        self.before = vectors @ self.stored[:m].T if m else None
        self.within = vectors @ vectors.T
        self.new_rows: list[int] = []  # positions in the block stored so far

    def store(self, pos: int) -> int:
        """Store the block's query at `pos`: its row (the row is read by the scale at once;
        this block's own search keeps using `within`)."""
        import numpy as np

        row = self.rows
        if row == len(self.stored):
            grown = np.empty((2 * len(self.stored), self.stored.shape[1]), dtype=np.float32)
            grown[:row] = self.stored
            self.stored = grown
        self.stored[row] = self.vectors[pos]
        self.rows += 1
        self.row_of[self.block[pos]] = row
        self.new_rows.append(pos)
        return row

    def end(self) -> None:
        self.stored_index.extend(self.block[pos] for pos in self.new_rows)  # in row order
        self.before = self.within = None  # a block's products: freed before the next


class _OnlineScale:
    """The embedding model's scale as the store would keep it while the replay fills it:
    made from the reference vectors at the start (when there are some), estimated again
    (vectors.estimate_from, as scales.estimated does) when the stored vectors first number
    CALIBRATION_MIN_VECTORS and each time they double, from a uniform sample of their
    distinct rows."""

    def __init__(self, reference: np.ndarray | None = None) -> None:
        import numpy as np

        self.reference = reference
        self.members: list[tuple[_SimulatedScope, int]] = []  # (scope, row) of every stored vector, across scopes
        self.current: Calibration | None = None
        self.directions: np.ndarray | None = None  # current's, float64
        self._rng = np.random.default_rng(0)
        if reference is not None:
            self._made(estimate_from(reference, np.empty((0, reference.shape[1])), 0, 0))

    def stored(self, scope: _SimulatedScope, row: int) -> None:
        import numpy as np

        self.members.append((scope, row))
        count = len(self.members)
        if count >= next_estimate_at(self.current):
            picked = self._rng.choice(count, size=min(count, 2 * CALIBRATION_SAMPLE), replace=False)
            sample = np.stack([self.members[i][0].stored[self.members[i][1]] for i in picked]).astype("f8")
            self._made(estimate_from(self.reference, distinct_rows(sample, CALIBRATION_SAMPLE), count, 0))

    def _made(self, scale: Calibration) -> None:
        import numpy as np

        self.current = scale
        self.directions = np.asarray(scale.directions, np.float64)

    def rescore(self, vector: np.ndarray, pool: list[tuple[int, float]], scope: _SimulatedScope,
                limit: int) -> list[tuple[int, float, float]]:
        """engine.rescore, on arrays: (item index, calibrated similarity, cosine), best first."""
        import numpy as np

        assert self.current is not None and self.directions is not None
        if not pool:
            return []
        ids = [i for i, _ in pool]
        cosines = np.array([c for _, c in pool])
        mine = vector.astype(np.float64) @ self.directions.T
        theirs = scope.stored[[scope.row_of[i] for i in ids]].astype(np.float64) @ self.directions.T
        scores = calibrated_many(cosines, mine, theirs, self.current)
        order = sorted(range(len(ids)), key=lambda k: (-scores[k], -cosines[k]))[:limit]
        return [(ids[k], float(scores[k]), float(cosines[k])) for k in order]


def _nearest(before: np.ndarray | None, before_index: list[int], within: np.ndarray | None,
             within_index: list[int], count: int = SEMANTIC_CANDIDATES) -> list[tuple[int, float]]:
    """The `count` most similar stored items, best first, from the rows stored before the
    block and those stored within it."""
    import numpy as np

    found: list[tuple[int, float]] = []
    for sims, index in ((before, before_index), (within, within_index)):
        if sims is None or not len(index):
            continue
        sims = sims[:len(index)]
        top = np.argpartition(-sims, min(count, len(index)) - 1)[:count] if len(index) > count else range(len(index))
        found += [(index[int(i)], float(sims[int(i)])) for i in top]
    return sorted(found, key=lambda pair: -pair[1])[:count]


# -- live and dry run ----------------------------------------------------------------------

def run_dry(settings: Settings, items: Sequence[ReplayQuery], vectors: np.ndarray | None,
            on_row: Callable[[Row], None], stop: threading.Event) -> None:
    """What each query would get from the cache as it is now: reads only."""
    has_vector = usable(vectors) if vectors is not None else None
    with open_engine(settings, read_only=True) as engine:
        for index, item in enumerate(items):
            if stop.is_set():
                return
            request = request_from(settings_for(settings, item), item.query)
            semantic = has_vector is None or bool(has_vector[index])  # without a vector, as ask: exact only
            explanation = engine.explain(request, SEMANTIC_CANDIDATES, vectors[index] if semantic and vectors
                                         is not None else None, semantic=semantic)
            decision = explanation.decision
            served = decision.served
            on_row(Row(item.line, item.query, item.label, served.source if served else "miss",
                       miss_reason=decision.miss_reason, matched=served.entry.id if served else None,
                       matched_label=served.entry.metadata.get("label") if served else None,
                       similarity=decision.similarity, confidence=decision.confidence,
                       saved_s=served.entry.generation_s if served else None,
                       saved_tokens=served.entry.saved_tokens if served else None, cosine=decision.cosine,
                       miss_detail=decision.detail))


def parse_thresholds(text: str) -> list[float]:
    """'0.80,0.85,0.9' or 'START:STOP:STEP' (inclusive)."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            values = [round(start + i * step, 6) for i in range(count)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--thresholds: {text!r} is not a list (0.8,0.85) or a range (0.70:0.95:0.01)") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise UsageError(f"--thresholds: {text!r} must name thresholds between 0 and 1")
    return values


# -- one replay, start to end --------------------------------------------------------------

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class Plan:
    mode: str  # live | dry-run | simulate
    thresholds: list[float]
    jobs: int = 4
    shuffle: int | None = None


def execute(settings: Settings, items: Sequence[ReplayQuery], plan: Plan, progress: ProgressFactory,
            on_row: Callable[[Row], None], warn: Callable[[str], None], stop: threading.Event) -> list[Report]:
    """Order, embed, run: one Report per threshold (one for live and dry runs)."""
    if plan.shuffle is not None:
        import numpy as np

        order = np.random.default_rng(plan.shuffle).permutation(len(items))
        items = items.taken(order.tolist()) if isinstance(items, Queries) else [items[int(i)] for i in order]
    if plan.mode == "simulate":  # embedded a block at a time, each simulated as it comes
        from semcache_cli.ollama import OllamaClient

        client = OllamaClient(settings.ollama_url, settings.timeout)
        texts = items.texts if isinstance(items, Queries) else [item.query for item in items]
        try:
            reference = _reference_for(client, settings, warn) if len(items) else None
            return simulate(items, embed_batches(client, settings.embed_model, texts), settings, plan.thresholds,
                            on_row, progress(f"simulating {len(plan.thresholds)} threshold"
                                             f"{'s' if len(plan.thresholds) > 1 else ''}", len(items)), reference)
        finally:
            client.close()
    if plan.mode == "live":  # embedded while the first queries are asked
        embeddings = LiveEmbeddings(settings, [item.query for item in items],
                                    progress(f"embedding with {settings.embed_model}", len(items)), warn, stop)
    else:
        vectors = _embed_for(settings, items, progress)

    report = Report(plan.mode, settings.threshold)
    advance = progress("replaying" if plan.mode == "live" else "looking up", len(items))
    start = time.perf_counter()

    def record(row: Row) -> None:
        report.add(row)
        on_row(row)
        advance(1)

    try:
        if plan.mode == "live":
            run_live(settings, items, embeddings, plan.jobs, record, stop, warn)
        else:
            run_dry(settings, items, vectors, record, stop)
    except (KeyboardInterrupt, Stopped):
        report.interrupted = True
    finally:
        report.seconds = time.perf_counter() - start
    if plan.mode == "live" and report.queries:  # every query wrote: an answer, a hit, a log row
        _checkpoint(settings)
    return [report]


def _reference_for(client: Any, settings: Settings, warn: Callable[[str], None]) -> np.ndarray | None:
    """The reference questions' vectors, as ask embeds them at a model's first semantic
    lookup (None: the model failed on them, and the simulated cache calibrates as ask
    would then, from its own vectors)."""
    import numpy as np

    from semcache_cli.errors import SemcacheError
    from semcache_cli.storage import scales

    if settings.scale == "cosine":
        return None
    try:
        embedded = np.concatenate(list(embed_batches(client, settings.embed_model, list(scales.reference_questions()))))
    except SemcacheError as exc:
        warn(f"could not embed the reference questions ({exc}); the simulated scale starts at the cache's own vectors")
        return None
    rows = [row if np.isfinite(row).all() and row.any() else None for row in embedded]
    return scales.reference_matrix(rows, embedded.shape[1])


def _checkpoint(settings: Settings) -> None:
    """Fold the write-ahead log into the store (and truncate it) once a live replay has
    written: many answers fill SQLite's WAL up to its checkpoint size (16 MB at 16 KB
    pages), which stays on disk beside the database otherwise."""
    from semcache_cli.storage import open_store

    with open_store(settings) as store:
        store.checkpoint()


def _embed_for(settings: Settings, items: Sequence[ReplayQuery], progress: ProgressFactory) -> np.ndarray | None:
    """All embeddings up front, in batches (simulate and dry run: both need them all)."""
    from semcache_cli.ollama import OllamaClient

    if not items:
        return None
    client = OllamaClient(settings.ollama_url, settings.timeout)
    try:
        return embed_all(client, settings.embed_model, [item.query for item in items],
                         progress(f"embedding with {settings.embed_model}", len(items)))
    finally:
        client.close()
