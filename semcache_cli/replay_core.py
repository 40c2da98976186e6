"""What every replay mode shares (replay.py runs them; live_replay.py runs the live one
on worker processes): the queries, the per-query result rows, the stop signal, and the
embeddings batched through /api/embed."""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, overload

from semcache_cli.engine import embedding_text
from semcache_cli.errors import EmbedInputTooLong, SemcacheError

if TYPE_CHECKING:
    import numpy as np

    from semcache_cli.config import Settings

EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class ReplayQuery:
    line: int
    query: str
    label: str | None = None
    model: str | None = None
    system: str | None = None
    namespace: str | None = None


class Queries(Sequence[ReplayQuery]):
    """Many queries, kept by column: a replay of a million queries holds their texts, an
    array of line numbers and a few shared labels (about 100 MB), not a million objects
    (about 450 MB). Items are made when read; the rare per-line model, system and
    namespace are kept aside."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._lines = array("q")
        self._labels: list[str | None] = []
        self._shared: dict[str, str] = {}  # one string per distinct label
        self._overrides: dict[int, tuple[str | None, str | None, str | None]] = {}

    def append(self, item: ReplayQuery) -> None:
        if item.model or item.system or item.namespace:
            self._overrides[len(self.texts)] = (item.model, item.system, item.namespace)
        self.texts.append(item.query)
        self._lines.append(item.line)
        self._labels.append(None if item.label is None else self._shared.setdefault(item.label, item.label))

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> ReplayQuery: ...

    @overload
    def __getitem__(self, index: slice) -> list[ReplayQuery]: ...

    def __getitem__(self, index: int | slice) -> ReplayQuery | list[ReplayQuery]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        model, system, namespace = self._overrides.get(index, (None, None, None))
        return ReplayQuery(self._lines[index], self.texts[index], self._labels[index], model, system, namespace)

    def __iter__(self) -> Iterator[ReplayQuery]:
        return (self[i] for i in range(len(self)))

    def has_labels(self) -> bool:
        return any(label is not None for label in self._labels)

    def taken(self, order: Sequence[int]) -> Queries:
        """The same queries in another order (a shuffle)."""
        other = Queries()
        for i in order:
            other.append(self[int(i)])
        return other


def settings_for(settings: Settings, item: ReplayQuery) -> Settings:
    overrides = {name: getattr(item, name) for name in ("model", "system", "namespace") if getattr(item, name)}
    return replace(settings, **overrides) if overrides else settings


@dataclass
class Row:
    """What one query got: the per-query line of --out."""

    line: int
    query: str
    label: str | None
    source: str  # exact | semantic | model (live miss) | miss (dry run, simulate: no call) | error
    miss_reason: str | None = None
    matched: int | None = None  # entry id (live, dry run) or line of the stored query (simulate)
    matched_label: str | None = None
    similarity: float | None = None
    confidence: float | None = None
    error: str | None = None
    saved_s: float | None = None
    saved_tokens: int | None = None
    threshold: float | None = None
    cosine: float | None = None  # the raw cosine beside `similarity`, the calibrated score
    miss_detail: str | None = None  # a guard's words, when one explains the miss

    @property
    def hit(self) -> bool:
        return self.source in ("exact", "semantic")

    @property
    def correct(self) -> bool | None:
        if not self.hit or self.label is None or self.matched_label is None:
            return None
        return self.label == self.matched_label

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["similarity"] = None if self.similarity is None else round(self.similarity, 6)
        data["confidence"] = None if self.confidence is None else round(self.confidence, 6)
        data["cosine"] = None if self.cosine is None else round(self.cosine, 6)
        return data


def embed_batches(client: Any, embed_model: str, texts: list[str]) -> Iterator[np.ndarray]:
    """Unit float32 vectors of the texts, a block per /api/embed call of EMBED_BATCH. A
    text the model gave an unusable vector (all zeros, or not finite) gets a row of NaN:
    that query goes without its semantic layer, as `ask` does (`usable` tells them)."""
    import numpy as np

    dims: int | None = None
    for start in range(0, len(texts), EMBED_BATCH):
        batch = [embedding_text(embed_model, t) for t in texts[start:start + EMBED_BATCH]]
        block = _embedded(client, embed_model, batch)
        lengths = {len(row) for row in block if row is not None}
        if dims is not None and lengths - {dims}:
            raise SemcacheError(f"{embed_model} returned embeddings of different lengths")
        dims = dims or next(iter(lengths), None)
        matrix = np.full((len(batch), dims or 1), np.nan, dtype=np.float32)
        for i, row in enumerate(block):
            if row is not None:
                matrix[i] = np.frombuffer(row, dtype=np.float32)
        yield matrix / np.linalg.norm(matrix, axis=1, keepdims=True)  # unit length, as vectors.unit_vector makes


def _embedded(client: Any, embed_model: str, batch: list[str]) -> list[Any]:
    """The batch's vectors; when one text is longer than the model's context the server
    refuses the whole batch, so it is embedded again a text at a time and that text
    goes without a vector (exact layer only, as `ask` does)."""
    try:
        return list(client.embed(embed_model, batch))
    except EmbedInputTooLong:
        if len(batch) == 1:
            return [None]
        return [vector for text in batch for vector in _embedded(client, embed_model, [text])]


def usable(matrix: np.ndarray) -> np.ndarray:
    """Which rows of embed_batches' blocks hold a vector."""
    import numpy as np

    return np.isfinite(matrix).all(axis=1)


class Stopped(BaseException):
    """Raised inside a streaming generation when the replay is interrupted, so the
    partial answer is dropped (never stored) and the claim released."""
