"""The records that cross the storage port, each defined once: a stored entry, an answer
to store, a request-log row, and the aggregates `stats` reads (the Selector is in
selector.py, which an ask never loads). NamedTuples where nothing changes them: each
dataclass costs every process ~0.3 ms to define, a NamedTuple a quarter of that.

Vectors cross the port as sequences of floats (an `array('f')` or a numpy row), unit
length; how a backend keeps them (float32 blobs, pgvector columns) is its own affair.
Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from semcache_cli.errors import UnreadableEntry


class Entry(NamedTuple):
    """One stored answer, as every backend returns it."""

    id: int
    scope: str
    exact_key: str
    namespace: str
    model: str
    system: str | None
    options: dict[str, Any]
    format: Any
    query: str
    response: str
    embed_model: str | None
    dims: int | None
    created_at: float
    ttl: float | None
    expires_at: float | None
    hits: int
    last_hit_at: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    generation_s: float | None
    done_reason: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_stored(cls, values: Sequence[Any]) -> Entry:
        """An entry from its stored values in ENTRY_FIELDS order, the JSON fields as text.
        Every field is checked for type and range: a row that does not hold (written by
        a broken version, or by hand) is UnreadableEntry (naming the fields, and with
        the entry repaired when only its counters and notes are damaged), never a
        half-built entry that breaks an ask or a date later."""
        data = dict(zip(ENTRY_FIELDS, values, strict=True))
        bad: list[str] = []
        for name in ("options", "format", "metadata"):
            try:
                text = data[name]
                data[name] = json.loads(text) if text else ({} if name != "format" else None)
            except (TypeError, ValueError, RecursionError):
                bad.append(name)
        for name, check in _CHECKS.items():
            value = data[name]
            if name not in bad and not check(value):
                bad.append(name)
            elif isinstance(value, int) and name in _FLOATS:
                data[name] = float(value)
        if bad:
            repaired = cls(**{**data, **{name: _REPAIRS[name] for name in bad}}) \
                if all(name in _REPAIRS for name in bad) else None
            raise UnreadableEntry(data["id"] if type(data["id"]) is int else -1, tuple(bad), repaired)
        return cls(**data)

    @classmethod
    def decode(cls, values: Sequence[Any], damaged: Callable[[UnreadableEntry], None] | None) -> Entry | None:
        """from_stored for a listing that goes on past a damaged entry: without `damaged`,
        it raises as from_stored does; with it, the damage is passed to `damaged` and the
        repaired entry (or None: skip it) returned. The one place a listing meets it."""
        try:
            return cls.from_stored(values)
        except UnreadableEntry as exc:
            if damaged is None:
                raise
            damaged(exc)
            repaired: Entry | None = exc.repaired
            return repaired

    @property
    def saved_tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def stored_values(self) -> tuple[Any, ...]:
        """The values of STORED_FIELDS, JSON fields as text: the entry as another store
        keeps it, hits and all (copy)."""
        return _as_stored(self._asdict())


class Damaged:
    """The damaged entries one listing met (pass it as `damaged`), for the one warning
    the command gives at the end: which entries, which fields, how many."""

    def __init__(self) -> None:
        self.met: list[UnreadableEntry] = []

    def __call__(self, exc: UnreadableEntry) -> None:
        self.met.append(exc)

    @property
    def skipped(self) -> int:
        return sum(exc.repaired is None for exc in self.met)

    def warning(self, location: str, kept: str) -> str | None:
        """One line, or None when every entry was sound; `kept` says what became of a
        repaired one ("shown", "copied")."""
        if not self.met:
            return None
        shown = self.met[:5]
        parts = [f"entry {exc.entry_id} ({', '.join(exc.fields)}) "
                 f"{kept + ' with those fields reset' if exc.repaired is not None else 'left out'}" for exc in shown]
        more = f" and {len(self.met) - len(shown):,} more" if len(self.met) > len(shown) else ""
        count = len(self.met)
        ids = " ".join(f"--id {exc.entry_id}" for exc in shown)
        return (f"{count:,} damaged entr{'y' if count == 1 else 'ies'} in {location}: {'; '.join(parts)}{more}; "
                f"semcache purge {ids} removes {'it' if count == 1 else 'them'}")


# Times are seconds since the epoch that a date can show (up to the year 9999).
MAX_TIMESTAMP = 253_402_300_799.0


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _optional_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _count(value: Any) -> bool:
    return value is None or (type(value) is int and 0 <= value <= 2**53)


def _time(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value <= MAX_TIMESTAMP


def _optional_time(value: Any) -> bool:
    return value is None or _time(value)


def _seconds(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and 0 <= value <= MAX_TIMESTAMP)


_CHECKS = {
    "id": lambda v: type(v) is int, "scope": _text, "exact_key": _text, "namespace": _text, "model": _text,
    "system": _optional_text, "options": lambda v: isinstance(v, dict), "query": _text, "response": _text,
    "embed_model": _optional_text, "dims": lambda v: v is None or (type(v) is int and v > 0),
    "created_at": _time, "ttl": _seconds, "expires_at": _optional_time, "hits": lambda v: type(v) is int and v >= 0,
    "last_hit_at": _optional_time, "prompt_tokens": _count, "completion_tokens": _count, "generation_s": _seconds,
    "done_reason": _optional_text, "metadata": lambda v: isinstance(v, dict),
}
_FLOATS = frozenset({"created_at", "ttl", "expires_at", "last_hit_at", "generation_s"})
# What a damaged counter or note is reset to: nothing an ask decides on (the question, the
# answer, the scope, the dates) is ever guessed.
_REPAIRS: dict[str, Any] = {
    "hits": 0, "last_hit_at": None, "prompt_tokens": None, "completion_tokens": None, "generation_s": None,
    "done_reason": None, "metadata": {}, "ttl": None, "embed_model": None, "dims": None,
}

ENTRY_FIELDS: tuple[str, ...] = Entry._fields
# The fields an answer is stored with (all but the id), in the order of stored_values().
STORED_FIELDS: tuple[str, ...] = ENTRY_FIELDS[1:]
JSON_FIELDS = frozenset({"options", "format", "metadata"})


def _as_stored(values: dict[str, Any]) -> tuple[Any, ...]:
    """STORED_FIELDS of a record, its JSON fields as the stores keep them: keys sorted,
    no format as NULL."""
    values = {**values, "options": json.dumps(values["options"] or {}, sort_keys=True),
              "format": json.dumps(values["format"]) if values["format"] is not None else None,
              "metadata": json.dumps(values["metadata"] or {}, sort_keys=True)}
    return tuple(values[name] for name in STORED_FIELDS)


@dataclass
class NewEntry:
    """An answer to store, with what Ollama's final chunk said about it. `vector` is the
    question's unit embedding (or None: stored without one)."""

    scope: str
    exact_key: str
    namespace: str
    model: str
    system: str | None
    options: dict[str, Any]
    format: Any
    query: str
    response: str
    created_at: float
    ttl: float | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    generation_s: float | None = None
    done_reason: str | None = None
    metadata: dict[str, Any] | None = None
    embed_model: str | None = None
    vector: Sequence[float] | None = None

    @property
    def dims(self) -> int | None:
        return len(self.vector) if self.vector is not None else None

    def stored_values(self) -> tuple[Any, ...]:
        """The values of STORED_FIELDS for this answer, JSON fields as text: a new entry
        has no hits yet."""
        return _as_stored({
            **{name: getattr(self, name) for name in self.__dataclass_fields__}, "dims": self.dims,
            "embed_model": self.embed_model if self.vector is not None else None,
            "expires_at": None if self.ttl is None else self.created_at + self.ttl, "hits": 0, "last_hit_at": None,
        })


class LogRow(NamedTuple):
    """One row of the request log: what one ask did. `id` is the store's, once logged."""

    at: float
    path: str  # exact | semantic | model | miss | error
    namespace: str | None = None
    model: str | None = None
    embed_model: str | None = None
    scope: str | None = None
    exact_key: str | None = None
    query: str | None = None
    entry_id: int | None = None
    similarity: float | None = None
    confidence: float | None = None
    miss_reason: str | None = None
    latency_ms: float | None = None
    saved_s: float | None = None
    saved_tokens: int | None = None
    error: str | None = None
    cosine: float | None = None  # the raw cosine beside `similarity`, the calibrated score
    id: int | None = None  # last: a row's other values are row[:-1], in LOG_FIELDS order


# The fields a row is logged with, in this order (the id is the store's to give).
LOG_FIELDS: tuple[str, ...] = LogRow._fields[:-1]


SORTS = ("newest", "oldest", "hits", "last-hit")


class EntryCounts(NamedTuple):
    total: int
    expired: int
    oldest: float | None
    newest: float | None
    by_namespace: dict[str, int]
    by_model: dict[str, int]
    by_embed_model: dict[str, int]
    damaged: int = 0  # entries whose stored fields do not hold what they should
    damaged_ids: tuple[int, ...] = ()  # the first few of them


class RequestCounts(NamedTuple):
    """The request log's counts over a window, as stored (stats.py derives the rest)."""

    by_path: dict[str, int]
    misses_by_reason: dict[str, int]  # misses that asked the cache (bypasses apart)
    bypasses: int
    saved_s: float
    saved_tokens: int
    latencies_ms: dict[str, list[float]]  # by path, ascending


class Neighbour(NamedTuple):
    """A stored entry near a query: its raw cosine, and its vector's projections on the
    calibration directions the lookup asked for (vectors.calibrated takes them)."""

    id: int
    cosine: float
    projections: tuple[float, ...] = ()


class VectorGroup(NamedTuple):
    """The stored vectors of one embedding model and dimension, across scopes."""

    embed_model: str
    dims: int
    vectors: int
    top_id: int  # the newest entry among them: where the scale's growth is counted from


class TopEntry(NamedTuple):
    id: int
    hits: int
    query: str


# -- an embedding model's calibrated scale, as both backends keep it ------------------------

def calibration_columns(scale: Any) -> tuple[Any, ...]:
    """A vectors.Calibration as the columns of `calibrations` after embed_model (the
    directions and offsets as little-endian float32, as every stored vector)."""
    from semcache_cli import vectors

    return (scale.dims, scale.vectors, scale.checked_at, b"".join(vectors.encode(d) for d in scale.directions),
            vectors.encode(scale.offsets), scale.median, scale.spread, scale.effective_dims, scale.identical,
            scale.reference, scale.distinct)


# The columns calibration_columns fills, in order, after embed_model.
CALIBRATION_COLUMNS = ("dims", "vectors", "checked_at", "directions", "offsets", "median", "spread", "effective_dims",
                       "identical", "reference", "distinct_vectors")


def calibration_from_columns(row: Sequence[Any]) -> Any:
    """The columns of `calibrations` after embed_model as a vectors.Calibration, or None
    when they are not one, or not one estimate() could have made (vectors.flaw): a
    damaged or edited row reads as no scale, and the next ask makes it again."""
    import math

    from semcache_cli import vectors

    dims, count, checked_at, directions, offsets, median, spread, effective, identical, reference, distinct = row
    if not (type(dims) is int and 0 < dims <= 1_000_000 and _count(count) and count is not None
            and type(checked_at) is int and checked_at >= 0 and type(reference) is int and type(distinct) is int
            and isinstance(directions, bytes | bytearray | memoryview) and isinstance(offsets, bytes | bytearray | memoryview)
            and all(type(v) in (int, float) and math.isfinite(v) for v in (median, spread, effective, identical))):
        return None
    directions, offsets = bytes(directions), bytes(offsets)
    width = 4 * dims
    if len(directions) % width or len(directions) // width != len(offsets) // 4 or len(offsets) % 4:
        return None
    flat, shifts = vectors.decode(directions), vectors.decode(offsets)
    if not all(map(math.isfinite, flat)) or not all(map(math.isfinite, shifts)):
        return None
    rows = tuple(flat[i:i + dims] for i in range(0, len(flat), dims))
    if rows and (len(rows) > vectors.directions_for(dims) or median >= 1):
        return None
    scale = vectors.Calibration(dims, count, checked_at, rows, tuple(shifts), float(median), float(spread),
                                float(effective), float(identical), reference, distinct)
    return None if vectors.flaw(scale) else scale
