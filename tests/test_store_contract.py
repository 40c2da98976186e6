"""The storage port's contract: what every backend must do, tested through the port
alone (no tables, no SQL), on a new empty store of each backend (conftest.BACKENDS).
Tests of one backend's own layout live in that backend's file (test_store_sqlite.py)."""

from __future__ import annotations

from array import array

import numpy as np
import pytest

from semcache_cli import vectors
from semcache_cli.storage.models import Entry, EntryCounts, LogRow, NewEntry
from semcache_cli.storage.port import Store
from semcache_cli.storage.selector import Selector

MODEL = "all-minilm:latest"
NOW = 1_700_000_000.0


def unit(values: object) -> array:
    return vectors.unit_vector(list(np.asarray(values, dtype=np.float64)))


def answer(query: str = "q", response: str | None = None, scope: str = "s1", vector: array | None = None,
           **changes: object) -> NewEntry:
    fields: dict[str, object] = dict(
        scope=scope, exact_key=f"k-{query}", namespace="default", model="llama3.2:latest", system=None, options={},
        format=None, query=query, response=response or f"answer to {query}", created_at=NOW, ttl=3600.0,
        prompt_tokens=5, completion_tokens=12, generation_s=2.5, done_reason="stop",
        embed_model=MODEL if vector is not None else None, vector=vector,
    )
    fields.update(changes)
    return NewEntry(**fields)  # type: ignore[arg-type]


def exact_best(vectors_by_id: dict[int, array], query: array) -> tuple[int, float]:
    ids = list(vectors_by_id)
    matrix = np.array([vectors_by_id[i] for i in ids], dtype=np.float32).astype(np.float64)
    scores = matrix @ np.asarray(query, dtype=np.float64)
    best = int(scores.argmax())
    return ids[best], float(scores[best])


def near(vector: array, rng: np.random.Generator, cosine: float) -> array:
    base = np.asarray(vector, dtype=np.float64)
    noise = rng.standard_normal(len(base))
    noise -= noise @ base * base
    noise /= np.linalg.norm(noise)
    return unit(cosine * base + np.sqrt(1 - cosine**2) * noise)


# -- entries -------------------------------------------------------------------------------

def test_an_answer_comes_back_as_it_was_stored(backend_store: Store) -> None:
    vector = unit([3.0, -4.0, 0.0])
    entry_id = backend_store.store_answer(answer(
        "What is X?", "X is Y.", system="Be brief.", options={"temperature": 0.0, "stop": ["END"]},
        format={"type": "object"}, metadata={"label": "x", "n": 2}, vector=vector, ttl=None))
    entry = backend_store.get(entry_id)
    assert entry is not None and entry == backend_store.find_exact("s1", "k-What is X?")
    assert (entry.query, entry.response, entry.system, entry.options, entry.format, entry.metadata) == (
        "What is X?", "X is Y.", "Be brief.", {"temperature": 0.0, "stop": ["END"]}, {"type": "object"},
        {"label": "x", "n": 2})
    assert (entry.embed_model, entry.dims, entry.created_at, entry.ttl, entry.expires_at) == (MODEL, 3, NOW, None, None)
    assert (entry.hits, entry.last_hit_at, entry.prompt_tokens, entry.completion_tokens) == (0, None, 5, 12)
    assert (entry.generation_s, entry.done_reason, entry.saved_tokens) == (2.5, "stop", 17)
    assert list(backend_store.vector_of(entry_id) or []) == pytest.approx([0.6, -0.8, 0.0])
    assert backend_store.find_exact("s2", "k-What is X?") is None  # another scope
    assert backend_store.get(entry_id + 1000) is None


def test_storing_again_replaces_the_answer_under_the_same_id(backend_store: Store) -> None:
    first = backend_store.store_answer(answer(response="old", vector=unit([1, 0, 0])))
    backend_store.record_hit(first, NOW + 5, LogRow(at=NOW + 5, path="exact", entry_id=first))
    second = backend_store.store_answer(answer(response="new", created_at=NOW + 100))
    entry = backend_store.get(first)
    assert second == first and entry is not None
    assert (entry.response, entry.created_at, entry.expires_at, entry.hits, entry.last_hit_at) == (
        "new", NOW + 100, NOW + 3700, 0, None)
    assert backend_store.count() == 1
    # the new state has no vector, so the old one must not linger
    assert backend_store.vector_of(first) is None
    assert backend_store.nearest("s1", MODEL, unit([1, 0, 0]), 5) == []


def test_a_hit_is_counted_with_its_log_row(backend_store: Store) -> None:
    entry_id = backend_store.store_answer(answer())
    backend_store.record_hit(entry_id, NOW + 10, LogRow(at=NOW + 10, path="semantic", entry_id=entry_id,
                                                        similarity=0.9, confidence=0.93, saved_s=2.5))
    backend_store.record_hit(entry_id, NOW + 20, LogRow(at=NOW + 20, path="exact", entry_id=entry_id))
    entry = backend_store.get(entry_id)
    assert entry is not None and (entry.hits, entry.last_hit_at) == (2, NOW + 20)
    rows = list(backend_store.request_log())
    assert [(r.path, r.entry_id, r.similarity, r.saved_s) for r in rows] == [
        ("semantic", entry_id, 0.9, 2.5), ("exact", entry_id, None, None)]
    assert rows[0].id is not None and rows[1].id is not None and rows[0].id < rows[1].id


def test_hits_recorded_in_a_batch_count_as_one_by_one(backend_store: Store) -> None:
    first, second = backend_store.store_answer(answer()), backend_store.store_answer(answer("other"))
    backend_store.record_hits([
        (first, NOW + 10, LogRow(at=NOW + 10, path="semantic", entry_id=first, similarity=0.9)),
        (second, NOW + 15, LogRow(at=NOW + 15, path="exact", entry_id=second)),
        (first, NOW + 20, LogRow(at=NOW + 20, path="exact", entry_id=first)),
    ])
    hit_first, hit_second = backend_store.get(first), backend_store.get(second)
    assert hit_first is not None and (hit_first.hits, hit_first.last_hit_at) == (2, NOW + 20)
    assert hit_second is not None and (hit_second.hits, hit_second.last_hit_at) == (1, NOW + 15)
    assert [(r.path, r.entry_id, r.similarity) for r in backend_store.request_log()] == [
        ("semantic", first, 0.9), ("exact", second, None), ("exact", first, None)]
    backend_store.record_hits([])  # nothing to do is no error


def test_an_answer_stored_with_its_log_row_gives_the_row_its_id(backend_store: Store) -> None:
    entry_id = backend_store.store_answer(answer("q1"), LogRow(at=NOW, path="model", query="q1", miss_reason="no_match"))
    (row,) = backend_store.request_log()
    assert (row.path, row.entry_id, row.query, row.miss_reason) == ("model", entry_id, "q1", "no_match")


def test_the_log_is_read_back_in_order_and_trimmed_by_age(backend_store: Store) -> None:
    for age in (300, 200, 100):
        backend_store.log_request(LogRow(at=NOW - age, path="miss", query=f"asked {age}s ago", namespace="team"))
    assert [r.query for r in backend_store.request_log()] == ["asked 300s ago", "asked 200s ago", "asked 100s ago"]
    assert [r.query for r in backend_store.request_log(since=NOW - 250)] == ["asked 200s ago", "asked 100s ago"]
    assert backend_store.delete_log_before(NOW - 150) == 2
    assert [r.namespace for r in backend_store.request_log()] == ["team"]


def test_many_answers_at_once(backend_store: Store) -> None:
    rng = np.random.default_rng(3)
    rows = [unit(v) for v in rng.standard_normal((300, 16))]
    ids = backend_store.store_many([answer(f"q{i}", vector=v) for i, v in enumerate(rows)]
                                   + [answer("no vector")])
    assert len(set(ids)) == 301 and backend_store.count() == 301
    assert [backend_store.get(i).query for i in ids[:3]] == ["q0", "q1", "q2"]  # type: ignore[union-attr]
    found = backend_store.nearest("s1", MODEL, rows[123], 1)
    assert found[0].id == ids[123] and found[0].cosine == pytest.approx(1.0, abs=1e-6)


# -- search --------------------------------------------------------------------------------

def test_nearest_stays_within_scope_model_and_dimension(backend_store: Store) -> None:
    backend_store.store_answer(answer("a", vector=unit([1, 0, 0])))
    backend_store.store_answer(answer("b", scope="s2", vector=unit([1, 0, 0])))
    backend_store.store_answer(answer("c", vector=unit([1, 0, 0, 0])))
    backend_store.store_answer(answer("d", vector=unit([1, 0.1, 0]), embed_model="nomic-embed-text:latest"))
    near_a = backend_store.nearest("s1", MODEL, unit([1, 0.2, 0]), 5)
    assert [backend_store.get(i).query for i, *_ in near_a] == ["a"]  # type: ignore[union-attr]
    assert near_a[0].cosine == pytest.approx(1 / np.sqrt(1.04), abs=1e-6) and near_a[0].projections == ()
    assert backend_store.nearest("s3", MODEL, unit([1, 0, 0]), 5) == []


def test_nearest_ranks_best_first(backend_store: Store) -> None:
    for name, values in (("east", [1, 0]), ("north-east", [0.8, 0.6]), ("north", [0, 1]), ("west", [-1, 0])):
        backend_store.store_answer(answer(name, vector=unit(values)))
    found = backend_store.nearest("s1", MODEL, unit([1, 0.1]), 3)
    assert [backend_store.get(i).query for i, *_ in found] == ["east", "north-east", "north"]  # type: ignore[union-attr]
    assert [n.cosine for n in found] == sorted((n.cosine for n in found), reverse=True)


def test_nearest_agrees_with_an_exact_scan_through_restores_and_deletes(backend_store: Store) -> None:
    rng = np.random.default_rng(42)
    dims = 96
    kept: dict[int, array] = {}
    bulk = [unit(v) for v in rng.standard_normal((1500, dims))]
    for entry_id, vector in zip(backend_store.store_many([answer(f"k{i}", vector=v) for i, v in enumerate(bulk)]),
                                bulk, strict=True):
        kept[entry_id] = vector
    for i in range(1500, 1700):  # single stores after the bulk
        vector = unit(rng.standard_normal(dims))
        kept[backend_store.store_answer(answer(f"k{i}", vector=vector))] = vector

    def agree(count: int = 60) -> None:
        ids = list(kept)
        for _ in range(count):
            query = near(kept[ids[int(rng.integers(len(ids)))]], rng, float(rng.uniform(0.6, 0.98)))
            (found, similarity, _), = backend_store.nearest("s1", MODEL, query, 1)
            best, best_similarity = exact_best(kept, query)
            assert found == best and similarity == pytest.approx(best_similarity, abs=1e-5)

    agree()
    for entry_id in list(kept)[:40]:  # new vectors under the same ids: old ones must not matter
        vector = unit(rng.standard_normal(dims))
        assert backend_store.store_answer(answer(backend_store.get(entry_id).query, vector=vector)) == entry_id  # type: ignore[union-attr]
        kept[entry_id] = vector
    agree()
    doomed = list(kept)[100:400]
    assert backend_store.delete(doomed, Selector(), NOW) == 300
    for entry_id in doomed:
        query = near(kept.pop(entry_id), rng, 0.99)
        (found, *_), = backend_store.nearest("s1", MODEL, query, 1)
        assert found != entry_id and found in kept
    backend_store.compact()
    agree()


def test_nearest_gives_the_projections_asked_for(backend_store: Store) -> None:
    rng = np.random.default_rng(9)
    rows = [unit(v) for v in rng.standard_normal((50, 24))]
    ids = backend_store.store_many([answer(f"q{i}", vector=v) for i, v in enumerate(rows)])
    directions = [unit(v) for v in rng.standard_normal((3, 24))]
    found = backend_store.nearest("s1", MODEL, rows[7], 4, directions)
    assert found[0].id == ids[7] and len(found) == 4
    for neighbour in found:
        vector = np.asarray(rows[ids.index(neighbour.id)], dtype=np.float64)
        assert neighbour.projections == pytest.approx([float(np.dot(d, vector)) for d in directions], abs=1e-5)


# -- the calibrated scale -------------------------------------------------------------------

def test_a_models_scale_is_kept_and_replaced(backend_store: Store) -> None:
    rng = np.random.default_rng(4)
    sample = [unit(v) for v in rng.standard_normal((64, 16))]
    scale = vectors.estimate(sample, 64, 70)
    assert backend_store.calibration(MODEL, 16) is None
    backend_store.save_calibration(MODEL, scale)
    kept = backend_store.calibration(MODEL, 16)
    assert kept is not None and kept.ready and len(kept.directions) == 1
    assert (kept.dims, kept.vectors, kept.checked_at) == (16, 64, 70)
    assert kept.median == pytest.approx(scale.median) and kept.spread == pytest.approx(scale.spread)
    assert list(kept.directions[0]) == pytest.approx(list(scale.directions[0]), abs=1e-6)
    assert list(kept.offsets) == pytest.approx(list(scale.offsets), abs=1e-6)
    backend_store.save_calibration(MODEL, kept._replace(vectors=128, checked_at=200))
    assert backend_store.calibration(MODEL, 16).vectors == 128  # type: ignore[union-attr]
    assert backend_store.calibration(MODEL, 32) is None and backend_store.calibration("other:latest", 16) is None


def test_a_scale_advances_only_over_the_one_it_was_made_from(backend_store: Store) -> None:
    rng = np.random.default_rng(5)
    first = vectors.estimate([unit(v) for v in rng.standard_normal((32, 16))], 32, 32)
    assert backend_store.advance_calibration(MODEL, first, None)
    assert not backend_store.advance_calibration(MODEL, first._replace(vectors=40), None)  # one is there already
    newer = vectors.estimate([unit(v) for v in rng.standard_normal((64, 16))], 64, 64)
    assert backend_store.advance_calibration(MODEL, newer, first)
    # Another process, still holding the first scale, found 50 vectors: it must not undo the newer one.
    assert not backend_store.advance_calibration(MODEL, first._replace(checked_at=50), first)
    kept = backend_store.calibration(MODEL, 16)
    assert kept is not None and (kept.vectors, kept.checked_at) == (64, 64)
    assert kept.median == pytest.approx(newer.median)


def test_a_scale_no_estimate_could_have_made_reads_as_none(backend_store: Store) -> None:
    rng = np.random.default_rng(7)
    scale = vectors.estimate([unit(v) for v in rng.standard_normal((64, 16))], 64, 70)
    for damaged in (scale._replace(median=-50.0), scale._replace(offsets=(3.0,)),
                    scale._replace(directions=(array("f", [2.0] * 16),)), scale._replace(distinct=65),
                    scale._replace(vectors=20, distinct=20)):
        backend_store.save_calibration(MODEL, damaged)
        assert backend_store.calibration(MODEL, 16) is None, damaged  # the next ask makes it again
    backend_store.save_calibration(MODEL, scale._replace(reference=320, distinct=64))
    kept = backend_store.calibration(MODEL, 16)
    assert kept is not None and (kept.reference, kept.distinct) == (320, 64)


def test_reference_vectors_are_kept_per_model_apart_from_entries(backend_store: Store) -> None:
    assert backend_store.reference_vectors(MODEL, 8) is None and backend_store.top_entry_id() == 0
    blob = np.random.default_rng(8).standard_normal((70, 8)).astype("<f4").tobytes()
    backend_store.save_reference_vectors(MODEL, 8, "abc", blob)
    assert backend_store.reference_vectors(MODEL, 8) == ("abc", blob)
    backend_store.save_reference_vectors(MODEL, 8, "def", b"")  # replaced whole: a model that failed on them
    assert backend_store.reference_vectors(MODEL, 8) == ("def", b"")
    assert backend_store.reference_vectors(MODEL, 16) is None and backend_store.reference_vectors("x:latest", 8) is None
    assert backend_store.count() == 0 and backend_store.vector_groups() == []  # no entry, no vector of one
    ids = backend_store.store_many([answer(f"a{i}") for i in range(3)])
    assert backend_store.top_entry_id() == max(ids)


def test_the_vectors_of_each_model_are_counted_and_sampled(backend_store: Store) -> None:
    rng = np.random.default_rng(6)
    rows = [unit(v) for v in rng.standard_normal((40, 8))]
    ids = backend_store.store_many([answer(f"a{i}", vector=v, scope=f"s{i % 3}") for i, v in enumerate(rows)])
    others = backend_store.store_many([answer(f"b{i}", vector=unit(v), embed_model="nomic-embed-text:latest")
                                       for i, v in enumerate(rng.standard_normal((5, 12)))])
    backend_store.store_answer(answer("no vector"))
    groups = backend_store.vector_groups()
    assert [(g.embed_model, g.dims, g.vectors, g.top_id) for g in groups] == [
        (MODEL, 8, 40, max(ids)), ("nomic-embed-text:latest", 12, 5, max(others))]
    assert backend_store.vector_count(MODEL, 8) == 40 and backend_store.vector_count(MODEL, 9) == 0
    sample = backend_store.sample_vectors(MODEL, 8, 10)
    assert len(sample) == 10 and all(len(v) == 8 for v in sample)
    known = {tuple(round(float(x), 5) for x in v) for v in rows}
    assert all(tuple(round(float(x), 5) for x in v) in known for v in sample)  # across scopes, never another model
    assert len(backend_store.sample_vectors(MODEL, 8, 1000)) == 40


# -- claims --------------------------------------------------------------------------------

def test_a_claim_is_held_by_one_owner_until_released(backend_store: Store) -> None:
    assert backend_store.take_claim("s1", "k", "me", "host-a", 1, 15.0)
    assert not backend_store.take_claim("s1", "k", "you", "host-b", 2, 15.0)
    assert backend_store.take_claim("s1", "other question", "you", "host-b", 2, 15.0)
    backend_store.release_claim("s1", "k", "you")  # not yours: no effect
    assert not backend_store.take_claim("s1", "k", "you", "host-b", 2, 15.0)
    backend_store.release_claim("s1", "k", "me")
    assert backend_store.take_claim("s1", "k", "you", "host-b", 2, 15.0)


def test_a_claim_whose_lease_ran_out_is_taken_over_unless_renewed(backend_store: Store) -> None:
    # A lease of 0 s has run out by the next statement: no test waits for a clock.
    assert backend_store.take_claim("s1", "k", "me", "host-a", 1, 0.0)
    assert backend_store.take_claim("s1", "k", "you", "host-b", 2, 0.0)  # ran out: taken over
    assert backend_store.take_claim("s1", "k", "me", "host-a", 1, 0.0)
    backend_store.renew_claim("s1", "k", "me", 15.0)  # renewed past its end: held again
    assert not backend_store.take_claim("s1", "k", "you", "host-b", 2, 0.0)
    backend_store.renew_claim("s1", "k", "me", 0.0)  # shortened: run out
    assert backend_store.take_claim("s1", "k", "you", "host-b", 2, 15.0)
    backend_store.renew_claim("s1", "k", "me", 0.0)  # no longer mine: no effect
    assert not backend_store.take_claim("s1", "k", "third", "host-c", 3, 15.0)


def test_a_claim_outlives_the_connection_and_transaction_that_took_it(backend_store: Store) -> None:
    # What a transaction-pooling PgBouncer does to a client: every statement may run on
    # another server connection. A lease in the store, unlike a session lock, holds.
    taker, renewer = backend_store.reopen(), backend_store.reopen()
    assert taker.take_claim("s1", "k", "holder", "host-a", 1, 15.0)
    taker.close()  # the session that took it is gone
    assert not backend_store.take_claim("s1", "k", "waiter", "host-b", 2, 15.0)
    renewer.renew_claim("s1", "k", "holder", 0.0)  # the holder's heartbeat reaches it on another connection:
    assert backend_store.take_claim("s1", "k", "probe", "host-c", 3, 0.0)  # shortened to nothing, it ran out
    assert backend_store.take_claim("s1", "k", "holder", "host-a", 1, 0.0)
    renewer.renew_claim("s1", "k", "holder", 15.0)  # and lengthened, it holds
    assert not backend_store.take_claim("s1", "k", "waiter", "host-b", 2, 15.0)
    renewer.release_claim("s1", "k", "holder")
    renewer.close()
    assert backend_store.take_claim("s1", "k", "waiter", "host-b", 2, 15.0)


def test_storing_the_answer_releases_its_claim(backend_store: Store) -> None:
    assert backend_store.take_claim("s1", "k-q", "me", "host-a", 1, 15.0)
    backend_store.store_answer(answer("q"), claim_owner="me")
    assert backend_store.take_claim("s1", "k-q", "you", "host-b", 2, 15.0)


# -- selecting, listing, deleting ----------------------------------------------------------

@pytest.fixture
def varied(backend_store: Store) -> dict[str, int]:
    """Five entries that differ in every way a selector looks at."""
    made = {
        "old": answer("old question", created_at=NOW - 86400 * 40, ttl=None),
        "expired": answer("expired one", created_at=NOW - 7200, ttl=3600.0),
        "team": answer("Team Question", namespace="team", response="Mentions BANANAS"),
        "qwen": answer("qwen question", model="qwen2.5:latest", vector=unit([0, 1])),
        "fresh": answer("fresh question", created_at=NOW - 10, vector=unit([1, 0])),
    }
    ids = {name: backend_store.store_answer(new) for name, new in made.items()}
    backend_store.record_hit(ids["old"], NOW - 5, LogRow(at=NOW - 5, path="exact"))
    return ids


@pytest.mark.parametrize(("selector", "expected"), [
    (Selector(expired=True), ["expired"]),
    (Selector(live=True), ["old", "team", "qwen", "fresh"]),
    (Selector(older_than=86400 * 30), ["old"]),
    (Selector(namespace="team"), ["team"]),
    (Selector(model="qwen2.5"), ["qwen"]),  # the canonical name, :latest
    (Selector(embed_model="all-minilm"), ["qwen", "fresh"]),
    (Selector(grep="bananas"), ["team"]),  # in the answer, any case
    (Selector(grep="QUESTION"), ["old", "team", "qwen", "fresh"]),
    (Selector(grep="50%_"), []),  # no wildcards: the text itself
    (Selector(all=True), ["old", "expired", "team", "qwen", "fresh"]),
    (Selector(unused_since=NOW - 60), ["expired"]),  # old was hit 5 s ago, the rest are newer
    (Selector(live=True, namespace="default", grep="question"), ["old", "qwen", "fresh"]),
])
def test_selectors(backend_store: Store, varied: dict[str, int], selector: Selector, expected: list[str]) -> None:
    names = {entry_id: name for name, entry_id in varied.items()}
    assert [names[i] for i in backend_store.select_ids(selector, NOW)] == expected


def test_selector_ids(backend_store: Store, varied: dict[str, int]) -> None:
    assert backend_store.select_ids(Selector(ids=[varied["team"], 99_999]), NOW) == [varied["team"]]


def test_delete_rechecks_its_selector(backend_store: Store, varied: dict[str, int]) -> None:
    chosen = backend_store.select_ids(Selector(expired=True), NOW)
    backend_store.store_answer(answer("expired one", created_at=NOW, ttl=3600.0))  # refreshed meanwhile
    assert backend_store.delete(chosen, Selector(expired=True), NOW) == 0
    assert backend_store.count() == 5
    assert backend_store.delete([varied["team"], varied["qwen"]], Selector(), NOW) == 2
    assert backend_store.count() == 3 and backend_store.get(varied["qwen"]) is None
    assert backend_store.vector_of(varied["qwen"]) is None  # its vector went with it
    assert backend_store.nearest("s1", MODEL, unit([0, 1]), 5)[0].id == varied["fresh"]


def test_least_recently_used_order(backend_store: Store, varied: dict[str, int]) -> None:
    names = {entry_id: name for name, entry_id in varied.items()}
    assert [names[i] for i in backend_store.lru_ids()] == ["qwen", "team", "old", "fresh", "expired"]
    sizes = backend_store.entry_sizes()
    assert [names[i] for i, _ in sizes] == ["expired", "fresh", "old", "team", "qwen"]
    assert all(size > 0 for _, size in sizes)


@pytest.mark.parametrize(("sort", "expected"), [
    ("newest", ["qwen", "team", "fresh", "expired", "old"]),  # equal times: the later id first
    ("oldest", ["old", "expired", "fresh", "team", "qwen"]),
    ("hits", ["old", "fresh", "qwen", "team", "expired"]),
    ("last-hit", ["old", "fresh", "qwen", "team", "expired"]),
])
def test_entries_are_listed_in_order(backend_store: Store, varied: dict[str, int], sort: str,
                                     expected: list[str]) -> None:
    names = {entry_id: name for name, entry_id in varied.items()}
    listed = [names[e.id] for e, _ in backend_store.entries(Selector(), NOW, sort)]
    assert listed == expected
    assert [names[e.id] for e, _ in backend_store.entries(Selector(), NOW, sort, limit=2)] == expected[:2]


def test_entries_with_their_vectors(backend_store: Store, varied: dict[str, int]) -> None:
    listed = {e.id: v for e, v in backend_store.entries(Selector(embed_model="all-minilm"), NOW, with_vectors=True)}
    assert {i: list(v or []) for i, v in listed.items()} == {varied["qwen"]: [0.0, 1.0], varied["fresh"]: [1.0, 0.0]}
    assert all(v is None for _, v in backend_store.entries(Selector(), NOW))


# -- stats ---------------------------------------------------------------------------------

def test_entry_counts(backend_store: Store, varied: dict[str, int]) -> None:
    assert backend_store.entry_counts(NOW) == EntryCounts(
        total=5, expired=1, oldest=NOW - 86400 * 40, newest=NOW,
        by_namespace={"default": 4, "team": 1}, by_model={"llama3.2:latest": 4, "qwen2.5:latest": 1},
        by_embed_model={"(none)": 3, MODEL: 2})
    assert [(t.id, t.hits, t.query) for t in backend_store.top_entries(5)] == [(varied["old"], 1, "old question")]


def test_an_empty_store_counts_nothing(backend_store: Store) -> None:
    assert backend_store.entry_counts(NOW) == EntryCounts(0, 0, None, None, {}, {}, {})
    counts = backend_store.request_counts(None)
    assert (counts.by_path, counts.misses_by_reason, counts.bypasses, counts.saved_s, counts.saved_tokens,
            counts.latencies_ms) == ({}, {}, 0, 0.0, 0, {})
    assert backend_store.top_entries(5) == [] and backend_store.similarity_samples(None, 0.75, 0.85) == []


def test_request_counts_over_a_window(backend_store: Store) -> None:
    rows = [
        LogRow(at=NOW - 10, path="exact", latency_ms=1.0, saved_s=2.0, saved_tokens=10),
        LogRow(at=NOW - 10, path="semantic", latency_ms=30.0, similarity=0.9, saved_s=3.0, saved_tokens=20),
        LogRow(at=NOW - 10, path="model", latency_ms=900.0, miss_reason="no_match", similarity=0.8),
        LogRow(at=NOW - 10, path="model", latency_ms=800.0, miss_reason="expired"),
        LogRow(at=NOW - 10, path="model", latency_ms=700.0, miss_reason="bypass"),
        LogRow(at=NOW - 10, path="miss", latency_ms=5.0, miss_reason="no_match", similarity=0.5),
        LogRow(at=NOW - 10, path="error", latency_ms=2.0, error="boom"),
        LogRow(at=NOW - 9999, path="exact", latency_ms=1.5, saved_s=100.0),
    ]
    for row in rows:
        backend_store.log_request(row)
    counts = backend_store.request_counts(NOW - 60)
    assert counts.by_path == {"exact": 1, "semantic": 1, "model": 3, "miss": 1, "error": 1}
    assert counts.misses_by_reason == {"no_match": 2, "expired": 1} and counts.bypasses == 1
    assert (counts.saved_s, counts.saved_tokens) == (5.0, 30)
    assert counts.latencies_ms["model"] == [700.0, 800.0, 900.0]
    assert backend_store.request_counts(None).latencies_ms["exact"] == [1.0, 1.5]
    assert sorted(backend_store.similarity_samples(NOW - 60, 0.75, 0.85)) == [("model", 0.8), ("semantic", 0.9)]


# -- size and connections ------------------------------------------------------------------

def test_size_accounting_follows_the_data(backend_store: Store) -> None:
    rng = np.random.default_rng(1)
    empty_log = backend_store.log_bytes()
    ids = backend_store.store_many([answer(f"q{i}", rng.bytes(1000).hex(), vector=unit(v))  # incompressible
                                    for i, v in enumerate(rng.standard_normal((400, 384)))])
    for _ in range(50):
        backend_store.log_request(LogRow(at=NOW, path="miss", query="a logged question " * 10))
    sizes = dict(backend_store.entry_sizes())
    assert sorted(sizes) == sorted(ids)
    data = sum(sizes.values())
    assert data >= 400 * (2000 + 384 * 4)  # at least the text and the float32 vectors
    assert backend_store.used_bytes() >= data
    assert backend_store.disk_bytes() >= data
    assert backend_store.log_bytes() >= empty_log + 50 * 180
    backend_store.delete(ids[:300], Selector(), NOW)
    backend_store.compact()
    backend_store.vacuum()
    assert sum(size for _, size in backend_store.entry_sizes()) < data / 3


def test_used_bytes_is_what_no_entry_holds_plus_each_entry(backend_store: Store) -> None:
    """What purge plans on (issue 23): deleting entries takes exactly their entry_sizes()
    off used_bytes(), whatever pages they leave part-full, so a dry run can tell the
    real run's figures and a second run finds the store as the first one left it."""
    rng = np.random.default_rng(2)
    ids = backend_store.store_many([answer(f"q{i}", rng.bytes(int(rng.integers(100, 3000))).hex(), vector=unit(v))
                                    for i, v in enumerate(rng.standard_normal((200, 384)))])
    for age in (100.0, 50.0, 10.0):
        backend_store.log_request(LogRow(at=NOW - age, path="miss", query="a logged question"))
    used, sizes = backend_store.used_bytes(), dict(backend_store.entry_sizes())
    gone = ids[10:150:2]
    backend_store.delete(gone, Selector(), NOW)
    backend_store.compact()
    assert backend_store.used_bytes() == used - sum(sizes[i] for i in gone)
    assert backend_store.count_log_before(NOW - 30) == 2
    before = backend_store.log_bytes(NOW - 30)
    assert 0 < before < backend_store.log_bytes()
    assert backend_store.delete_log_before(NOW - 30) == 2
    assert backend_store.used_bytes() == used - sum(sizes[i] for i in gone) - before
    assert backend_store.count_log_before(NOW - 30) == 0 and backend_store.log_bytes(NOW - 30) == 0


def test_the_log_rows_a_content_selector_names(backend_store: Store) -> None:
    rows = [LogRow(at=NOW, path="model", namespace="team", model="llama3.2", query="Reset my PASSWORD"),
            LogRow(at=NOW, path="semantic", namespace="default", model="llama3.2:latest", query="forgot login",
                   entry_id=7),
            LogRow(at=NOW, path="model", namespace="default", model="qwen2.5", query="what time is it"),
            LogRow(at=NOW, path="model", namespace="default", model="LLAMA3.2", query=None)]
    for row in rows:
        backend_store.log_request(row)
    assert backend_store.delete_log_of(Selector(grep="password"), [7], NOW, dry_run=True) == 2
    # entry 7's row was logged after the purge began: 7 may be a new entry's id by then
    assert backend_store.delete_log_of(Selector(grep="password"), [7], NOW - 1, dry_run=True) == 1
    assert backend_store.delete_log_of(Selector(model="llama3.2"), [], NOW, dry_run=True) == 3
    assert backend_store.delete_log_of(Selector(namespace="default", model="qwen2.5"), [], NOW, dry_run=True) == 1
    assert len(list(backend_store.request_log())) == 4  # counting deletes nothing
    assert backend_store.delete_log_of(Selector(grep="password"), [7], NOW) == 2
    assert [row.query for row in backend_store.request_log()] == ["what time is it", None]
    assert backend_store.delete_log_of(Selector(ids=[1]), [], NOW) == 0


def test_another_connection_sees_the_same_store(backend_store: Store) -> None:
    entry_id = backend_store.store_answer(answer())
    other = backend_store.reopen()
    try:
        assert other.get(entry_id) == backend_store.get(entry_id)
        assert other.take_claim("s1", "k", "me", "host-a", 1, 15.0)
        assert not backend_store.take_claim("s1", "k", "you", "host-b", 2, 15.0)
        other.checkpoint()
    finally:
        other.close()


def test_entries_of_another_store_are_imported_once(backend_store: Store) -> None:
    source = [
        Entry(901, "s1", "k-a", "default", "llama3.2:latest", "Be brief.", {"seed": 1}, {"type": "object"}, "a",
              "answer a", MODEL, 2, NOW, 3600.0, NOW + 3600, 7, NOW + 60, 5, 12, 2.5, "stop", {"label": "x"}),
        Entry(902, "s1", "k-b", "team", "llama3.2:latest", None, {}, None, "b", "answer b", None, None, NOW - 10,
              None, None, 0, None, None, None, None, "stop", {}),
    ]
    rows = [(source[0], unit([1, 0])), (source[1], None)]
    assert backend_store.import_entries(rows) == 2
    assert backend_store.import_entries(rows) == 0  # again: nothing new, nothing added
    a = backend_store.find_exact("s1", "k-a")
    assert a is not None and a._replace(id=901) == source[0]  # hits, metadata, everything but the id
    assert backend_store.nearest("s1", MODEL, unit([1, 0.1]), 1)[0][0] == a.id
    newer = source[0]._replace(created_at=NOW + 100, response="a newer answer", hits=0)
    older = source[1]._replace(created_at=NOW - 500, response="an older answer")
    assert backend_store.import_entries([(newer, None), (older, None)]) == 1
    assert backend_store.get(a.id).response == "a newer answer"  # type: ignore[union-attr]
    assert backend_store.vector_of(a.id) is None and backend_store.nearest("s1", MODEL, unit([1, 0]), 1) == []
    assert backend_store.find_exact("s1", "k-b").response == "answer b"  # type: ignore[union-attr]
    assert backend_store.count() == 2
