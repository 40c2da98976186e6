"""The storage port: everything the layers above ask of a cache store, as one typed
Protocol. Backends (storage/sqlite.py, the default single file; more to come) implement
it; nothing above storage/ sees SQL, a connection or a backend's exception.

Shaped by what the callers do, not by tables:
- ask: find_exact, nearest (the search index is the backend's own), get, store_answer,
  record_hit, log_request, the single-flight claims, and the calibrated scale of each
  embedding model (calibration, save_calibration, vector_count, sample_vectors, and the
  reference questions' vectors its cold start is made from);
- inspect: entries (streamed), vector_of;
- purge: select_ids, lru_ids, delete, delete_log_before, the size accounting
  (used_bytes, entry_sizes, log_bytes), compact, vacuum;
- stats: entry_counts, request_counts, similarity_samples, top_entries, disk_bytes;
- replay: request_log, store_many (bulk warming, benchmarks);
- copy: entries, import_entries.

Every failure of the backend reaches the caller as a StoreError (errors.py), with a
message that says what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from semcache_cli.storage.models import (
    Entry,
    EntryCounts,
    LogRow,
    Neighbour,
    NewEntry,
    RequestCounts,
    TopEntry,
    VectorGroup,
)
from semcache_cli.storage.selector import Selector

if TYPE_CHECKING:
    from semcache_cli.errors import UnreadableEntry
    from semcache_cli.vectors import Calibration


class Store(Protocol):
    location: str  # what to call it in messages: a path, or a URL without its password

    # -- the ask path ------------------------------------------------------------------

    def find_exact(self, scope: str, key: str) -> Entry | None:
        """The entry of this scope stored under this exact key."""

    def get(self, entry_id: int) -> Entry | None:
        """The entry with this id; None when it is gone (purged meanwhile)."""

    def nearest(self, scope: str, embed_model: str, vector: Sequence[float], k: int,
                directions: Sequence[Sequence[float]] = ()) -> list[Neighbour]:
        """Up to k entries of this scope embedded with this model at this dimension, most
        similar (raw cosine) first, each with its vector's projections on `directions`
        (the calibration's). Never another scope, model or dimension."""

    def store_answer(self, new: NewEntry, request: LogRow | None = None, claim_owner: str | None = None) -> int:
        """Upsert on (scope, exact key): a fresh answer replaces the old one under the same
        id. With `request`, its log row goes in the same transaction (with the entry id);
        with `claim_owner`, that owner's claim on the question is released with it."""

    def store_many(self, news: Iterable[NewEntry]) -> list[int]:
        """Insert many new answers (new exact keys) at once. Returns their ids."""

    def import_entries(self, rows: list[tuple[Entry, Sequence[float] | None]]) -> int:
        """Entries of another store (with their vectors), hits and all, under ids of this
        store's own: one new here is added, one created later than this store's copy
        replaces it, the rest are left as they are; so importing again adds nothing.
        Returns how many were written."""

    def record_hit(self, entry_id: int, now: float, request: LogRow) -> None:
        """Count a hit on the entry and log the request, together."""

    def record_hits(self, hits: Sequence[tuple[int, float, LogRow]]) -> None:
        """record_hit for many (entry id, time, request), in order, in one transaction
        (semcache serve records its hits in batches: a commit each cost half a hit)."""

    def log_request(self, request: LogRow) -> None:
        ...

    # -- the calibrated scale ----------------------------------------------------------

    def calibration(self, embed_model: str, dims: int) -> Calibration | None:
        """The model's stored scale (or its cold state: no directions yet), or None."""

    def save_calibration(self, embed_model: str, calibration: Calibration) -> None:
        """Keep the model's scale, whatever was stored (an estimate made on purpose)."""

    def advance_calibration(self, embed_model: str, calibration: Calibration, replacing: Calibration | None) -> bool:
        """Keep it only if the stored one is still `replacing` (the same vectors and
        checked_at; None: none stored), so what another process saved meanwhile stands.
        True when it was kept."""

    def reference_vectors(self, embed_model: str, dims: int) -> tuple[str, bytes] | None:
        """The model's reference questions' vectors (scales.py): the fingerprint of the
        questions they embed, and the vectors as concatenated little-endian float32."""

    def save_reference_vectors(self, embed_model: str, dims: int, fingerprint: str, blob: bytes) -> None:
        """Keep them, replacing any kept before, in one write: all or none."""

    def top_entry_id(self) -> int:
        """The highest entry id in use (0: none), read off the primary key."""

    def vector_groups(self) -> list[VectorGroup]:
        """Every (embedding model, dims) with stored vectors, and how many."""

    def vector_count(self, embed_model: str, dims: int) -> int:
        ...

    def sample_vectors(self, embed_model: str, dims: int, n: int) -> list[Sequence[float]]:
        """Up to n stored vectors of the model, drawn uniformly across scopes."""

    # -- single-flight claims ----------------------------------------------------------

    def take_claim(self, scope: str, key: str, owner: str, host: str, pid: int, lease_s: float) -> bool:
        """Claim answering (scope, key) for `owner`, for lease_s seconds, unless another
        holds a live claim; a claim whose lease ran out (or whose holder the backend can
        tell is gone) is taken over. True when `owner` holds it now. Leases run on the
        store's own clock: a shared store's clients need not agree on the time."""

    def renew_claim(self, scope: str, key: str, owner: str, lease_s: float) -> None:
        """The owner's claim now lasts lease_s more seconds; no effect on anyone else's."""

    def release_claim(self, scope: str, key: str, owner: str) -> None:
        ...

    # -- listing and selecting ---------------------------------------------------------

    def entries(self, selector: Selector, now: float, sort: str = "newest", limit: int = 0,
                with_vectors: bool = False, damaged: Callable[[UnreadableEntry], None] | None = None,
                ) -> Iterator[tuple[Entry, Sequence[float] | None]]:
        """Entries matching the selector in `sort` order (models.SORTS), streamed; with
        their vectors when asked. limit 0: all. An entry that cannot be decoded raises
        UnreadableEntry, unless `damaged` is given: then it gets the error and the
        listing goes on with the repaired entry, or past it (models.Entry.decode)."""

    def vector_of(self, entry_id: int) -> Sequence[float] | None:
        ...

    def count(self) -> int:
        ...

    def select_ids(self, selector: Selector, now: float) -> list[int]:
        """Ids of the entries matching a non-empty selector, ascending."""

    def lru_ids(self) -> list[int]:
        """Every entry id, most recently used (last hit, else creation) first."""

    def delete(self, ids: list[int], recheck: Selector, now: float) -> int:
        """Delete those of `ids` that still match `recheck` (an entry refreshed since it
        was chosen is kept), in short batches. Returns how many went."""

    def delete_log_before(self, at: float) -> int:
        ...

    def delete_log_of(self, selector: Selector, entry_ids: Sequence[int], before: float,
                      dry_run: bool = False) -> int:
        """Delete the request-log rows a content selector (namespace, model, embedding
        model, text, ids) names by their own fields, and those of the entries
        `entry_ids` (a hit on a paraphrase) logged up to `before` (an id freed by the purge
        may be another entry's by now); dry_run: only count them. Returns how many."""

    def count_log_before(self, at: float) -> int:
        """How many request-log rows delete_log_before(at) would delete."""

    def request_log(self, since: float | None = None) -> Iterator[LogRow]:
        """The request log's rows (with their ids) in the order they were logged."""

    # -- stats -------------------------------------------------------------------------

    def entry_counts(self, now: float) -> EntryCounts:
        ...

    def request_counts(self, since: float | None) -> RequestCounts:
        ...

    def similarity_samples(self, since: float | None, low: float, threshold: float) -> list[tuple[str, float]]:
        """(path, similarity) of semantic hits at or above `low`, and of no_match misses
        from `low` up to `threshold`."""

    def top_entries(self, limit: int) -> list[TopEntry]:
        ...

    # -- size and maintenance ----------------------------------------------------------

    def disk_bytes(self) -> int:
        """What the store takes on disk."""

    def used_bytes(self) -> int:
        """What its data takes, in the backend's own terms (the file as VACUUM packs it,
        the live rows as stored), computed from the data alone: the figure --max-size
        bounds. It is the part no entry holds plus every entry's entry_sizes() figure,
        so a purge can tell in advance what deleting some entries leaves."""

    def entry_sizes(self) -> list[tuple[int, int]]:
        """(id, bytes) of every entry with its vector, least recently used first, in the
        units of used_bytes(): what deleting it takes off that figure."""

    def log_bytes(self, before: float | None = None) -> int:
        """Bytes of data of the request log (of its rows logged before `before`), in the
        units of used_bytes()."""

    def compact(self) -> None:
        """Tidy the search index after deletions."""

    def vacuum(self) -> None:
        """Give the freed space back to the disk."""

    def checkpoint(self) -> None:
        """Fold any write-ahead log into the store, after a command that wrote a lot."""

    def now(self) -> float:
        """The store's clock, in seconds since the epoch: what entry times (created, expires,
        last hit) and the request log are stamped with and what expiry and age are judged
        against. A shared store's is its server's, so clients need not agree on the time."""

    def reopen(self) -> Store:
        """Another connection to the same store, for another thread."""

    def close(self) -> None:
        ...

    def __enter__(self) -> Store:
        ...

    def __exit__(self, *exc: object) -> None:
        """Closes the store."""
