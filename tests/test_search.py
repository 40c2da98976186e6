"""The SQLite backend's two-pass search (sign codes in chunk rows, then an exact re-rank)
on both of its paths, plain Python and numpy, against a plain exact scan of every stored
vector, on random data, through inserts, re-stores, deletes and purges: the fast path
must find the same entry and never a deleted one. The chunk layout is checked too."""

from __future__ import annotations

import sqlite3
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import db_rows

from semcache_cli import policy, vectors
from semcache_cli.purge import plan, purge
from semcache_cli.storage.models import NewEntry
from semcache_cli.storage.selector import Selector
from semcache_cli.storage.sqlite import SQLiteStore as Store
from semcache_cli.storage.sqlite_index import SEARCH_CHUNK, SEARCH_TAIL

DIMS = 384
SCOPE = policy.Scope("default", "llama3.2").hash
MODEL = "all-minilm:latest"


def new(key: str, vector: array, created: float | None = None) -> NewEntry:
    return NewEntry(
        scope=SCOPE, exact_key=key, namespace="default", model="llama3.2:latest", system=None, options={},
        format=None, query=key, response=f"answer {key}", created_at=created or time.time(), ttl=None,
        done_reason="stop", embed_model=MODEL, vector=vector,
    )


def put(store: Store, key: str, vector: array, created: float | None = None) -> int:
    return store.store_answer(new(key, vector, created))


def exact_best(store: Store, query: array) -> tuple[int, float]:
    """The reference: every stored vector, read from the file, scored in numpy."""
    rows = db_rows(store.path, "SELECT entry_id, vector FROM entry_vectors")
    ids = [r[0] for r in rows]
    matrix = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(ids), DIMS).astype(np.float64)
    scores = matrix @ np.asarray(query, np.float64)
    best = int(scores.argmax())
    return ids[best], float(scores[best])


def fast_best(store: Store, query: array) -> tuple[int, float]:
    found = store.nearest(SCOPE, MODEL, query, 1)[0]
    return found.id, found.cosine


def chunk_ids(store: Store) -> list[int]:
    return [i for r in db_rows(store.path, "SELECT ids FROM search_chunks ORDER BY chunk")
            for i in np.frombuffer(r[0], "<i8").tolist()]


def noisy(vector: Sequence[float], rng: np.random.Generator, cosine: float) -> array:
    """A unit vector at about `cosine` from vector: a paraphrase, as a cache sees it."""
    vector = np.asarray(vector, dtype=np.float64)
    noise = rng.standard_normal(DIMS)
    noise -= noise @ vector * vector
    noise /= np.linalg.norm(noise)
    return vectors.unit_vector(cosine * vector + np.sqrt(1 - cosine**2) * noise)


@pytest.fixture(params=["python", "numpy"])
def filled(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           ) -> tuple[Store, dict[int, array], np.random.Generator]:
    # Both search paths: plain Python (a fresh `ask` on a small cache) and numpy.
    monkeypatch.setattr(vectors, "use_numpy", lambda count: request.param == "numpy")
    rng = np.random.default_rng(42)
    store = Store.open(tmp_path / "c.db")
    matrix = [vectors.unit_vector(v) for v in rng.standard_normal((2 * SEARCH_CHUNK + 300, DIMS))]
    # 2,000 in one transaction (store_many), then 348 single stores
    ids = store.store_many([new(f"k{i}", v, time.time() - 10_000 + i) for i, v in enumerate(matrix[:2000])])
    ids += [put(store, f"k{i}", v, time.time() - 10_000) for i, v in enumerate(matrix[2000:], start=2000)]
    stored = dict(zip(ids, matrix, strict=True))
    yield store, stored, rng
    store.close()


def agreement(store: Store, stored: dict[int, array], rng: np.random.Generator, count: int = 100) -> None:
    ids = list(stored)
    for _ in range(count):
        target = ids[int(rng.integers(len(ids)))]
        query = noisy(stored[target], rng, float(rng.uniform(0.55, 0.98)))
        best_id, best_sim = fast_best(store, query)
        assert (best_id, pytest.approx(best_sim, abs=1e-6)) == exact_best(store, query)
        assert best_id in stored


def test_fast_path_agrees_with_an_exact_scan(filled) -> None:
    store, stored, rng = filled
    chunks = db_rows(store.path, "SELECT count, length(codes) FROM search_chunks ORDER BY chunk")
    # the bulk fills whole rows; single stores fill 64-code tails, each full tail folded
    # into the row before it while that has room (64 + 64 + ... = 320), then a new tail
    assert [tuple(r) for r in chunks] == [(1024, 1024 * 48), (976, 976 * 48), (320, 320 * 48), (28, 28 * 48)]
    agreement(store, stored, rng)


def test_after_restores_deletes_and_purges(filled) -> None:
    store, stored, rng = filled
    # re-store 50 entries with new vectors (same ids): the old codes must not matter
    for entry_id in list(stored)[:50]:
        vector = vectors.unit_vector(rng.standard_normal(DIMS))
        assert put(store, f"k{entry_id - 1}", vector) == entry_id
        stored[entry_id] = vector
    agreement(store, stored, rng)
    # delete 300 directly (as a crashed purge or another tool might): never served
    doomed = list(stored)[100:400]
    conn = sqlite3.connect(store.path)
    conn.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in doomed])
    conn.commit()
    conn.close()
    for entry_id in doomed:
        query = noisy(stored.pop(entry_id), rng, 0.99)
        best_id, best_sim = fast_best(store, query)
        assert best_id != entry_id and best_id in stored
        assert best_sim < 0.5  # what remains is far: a miss either way
    agreement(store, stored, rng)
    # purge through the purge code: chunks are compacted to exactly the live entries
    now = time.time()
    chosen = plan(store, Selector(older_than=5_000), now)
    purge(store, Selector(older_than=5_000), now, chosen)
    for entry_id in chosen.selected:
        stored.pop(entry_id, None)
    assert sorted(chunk_ids(store)) == sorted(stored)
    assert db_rows(store.path, "SELECT coalesce(sum(length(codes)), 0) FROM search_chunks")[0][0] == 48 * len(stored)
    agreement(store, stored, rng)
    # and new entries after the purge land in the chunks too
    for i in range(40):
        vector = vectors.unit_vector(rng.standard_normal(DIMS))
        stored[put(store, f"new{i}", vector)] = vector
    agreement(store, stored, rng)


def test_codes_match_their_vectors() -> None:
    vector = np.array([0.5, -0.1, 0.0, 0.3, -0.7, 0.2, 0.1, -0.2, 0.4], dtype="<f4")
    assert vectors.sign_code(vector) == bytes([0b10010110, 0b10000000])
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((50, 389)).astype("<f4")  # not a whole number of bytes
    matrix[0, :5] = 0.0
    expected = [np.packbits(row > 0).tobytes() for row in matrix]
    assert vectors.sign_codes(matrix.tobytes(), 389) == expected
    with_numpy = ([vectors.sign_code(row) for row in matrix], [vectors.encode(array("f", row)) for row in matrix])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vectors, "use_numpy", lambda count: False)
        plain = ([vectors.sign_code(array("f", row)) for row in matrix], [vectors.encode(array("f", row)) for row in matrix])
    assert with_numpy[0] == plain[0] == expected
    assert with_numpy[1] == plain[1] == [row.astype("<f4").tobytes() for row in matrix]


def test_python_and_numpy_paths_pick_the_same_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((3000, 96)).astype("<f4")
    ids = np.arange(100, 3100, dtype="<i8").tobytes()
    codes = [vectors.sign_code(row) for row in matrix]
    queries = [vectors.unit_vector(matrix[q] + rng.standard_normal(96) * 0.3 * (q % 3)) for q in range(20)]

    def hamming(query: array, entry_id: int) -> int:
        return (int.from_bytes(vectors.sign_code(query)) ^ int.from_bytes(codes[entry_id - 100])).bit_count()

    found = {}
    for path in ("python", "numpy"):
        monkeypatch.setattr(vectors, "use_numpy", lambda count, path=path: path == "numpy")
        for q, query in enumerate(queries):
            candidates = vectors.hamming_candidates(query, ids, b"".join(codes), 64)
            blob = b"".join(vectors.encode(vectors.unit_vector(matrix[i - 100])) for i in candidates)
            distances = sorted(hamming(query, i) for i in candidates)
            found[path, q] = (distances, vectors.top_matches(query, candidates, blob, 5))
    for q in range(20):
        # the same nearest codes (which of several equally near ones is taken may differ) ...
        assert len(found["python", q][0]) == 64 and found["python", q][0] == found["numpy", q][0]
        # ... the same best entry, the vector the query was made from, and the same score
        # for every entry both paths ranked
        assert found["python", q][1][0][0] == found["numpy", q][1][0][0] == 100 + q
        python_scores, numpy_scores = dict(found["python", q][1]), dict(found["numpy", q][1])
        for entry_id in python_scores.keys() & numpy_scores.keys():
            assert python_scores[entry_id] == pytest.approx(numpy_scores[entry_id], abs=1e-12)


def test_single_stores_fill_small_tails_that_fold_into_whole_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = Store.open(tmp_path / "c.db")
    stored = {put(store, f"k{i}", v): v for i, v in enumerate(vectors.unit_vector(r) for r in rng.standard_normal((1100, DIMS)))}
    rows = db_rows(store.path, "SELECT count FROM search_chunks ORDER BY chunk")
    assert [r[0] for r in rows] == [SEARCH_CHUNK, SEARCH_TAIL, 1100 - SEARCH_CHUNK - SEARCH_TAIL]
    assert chunk_ids(store) == sorted(stored)  # each once, in order
    codes = b"".join(r[0] for r in db_rows(store.path, "SELECT codes FROM search_chunks ORDER BY chunk"))
    assert codes == b"".join(vectors.sign_code(stored[i]) for i in sorted(stored))
    store.close()
