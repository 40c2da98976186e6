"""Live replay: every query through `Engine.ask` on worker processes, embedded on a
thread of the parent while the first ones are already asked.

Processes, not threads: against a model that answers at once a miss is ~3.5 ms of
interpreter time, and threads of one interpreter queue for its lock (2,000 instant
misses on 2 cores, timed in turn: 4 threads 218-248 queries/s, 4 processes 251-280).
Each worker has its own engine and store connection and coordinates with the others as
separate `ask` processes do (single-flight claims, the store's own locks). Ctrl-C,
SIGTERM to the whole group, a worker or the parent killed outright: each ends with
nothing partial stored and no claim or process left behind (tests/test_replay.py).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from semcache_cli.engine import open_engine, request_from
from semcache_cli.errors import EXIT_TERMINATED, ModelNotFound, OllamaError, OllamaUnreachable, SemcacheError
from semcache_cli.replay_core import ReplayQuery, Row, Stopped, embed_batches, settings_for, usable

if TYPE_CHECKING:
    from semcache_cli.config import Settings


NOT_YET = object()  # LiveEmbeddings.vector: that query is not embedded yet


class LiveEmbeddings:
    """The live replay's query vectors, embedded batch by batch on a thread of its own
    while the workers already ask the queries before them (embedding 2,000 queries
    up front left a core idle for ~1 s). When a batch fails (a missing embedding model,
    a bad reply), the queries left get no vector here and `Engine.ask` embeds each
    itself, falling back to the exact layer as `ask` does. An unreachable server stops
    the replay."""

    def __init__(self, settings: Settings, texts: list[str], progress: Callable[[int], None],
                 warn: Callable[[str], None], stop: threading.Event) -> None:
        self._rows: list[bytes | None] = []  # float32 vectors in query order; None: unusable
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._embed, args=(settings, texts, progress, warn, stop),
                         name="semcache-embed", daemon=True).start()

    def _embed(self, settings: Settings, texts: list[str], progress: Callable[[int], None],
               warn: Callable[[str], None], stop: threading.Event) -> None:
        from semcache_cli.ollama import OllamaClient

        client = OllamaClient(settings.ollama_url, settings.timeout)
        try:
            for block in embed_batches(client, settings.embed_model, texts):
                with self._changed:
                    self._rows.extend(row.tobytes() if ok else None for row, ok in zip(block, usable(block), strict=True))
                    self._changed.notify_all()
                progress(len(block))
                if stop.is_set():
                    return
        except OllamaUnreachable as exc:
            self._error = exc
        except (ModelNotFound, OllamaError) as exc:
            rest = len(texts) - len(self._rows)
            left = ("each query is" if not self._rows else "the query left is" if rest == 1
                    else f"the {rest:,} queries left are")
            warn(f"batch embedding failed ({exc}); {left} embedded one at a time, as `ask` does")
        except BaseException as exc:  # handed to the replay's own thread, which reports it
            self._error = exc
        finally:
            client.close()
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def vector(self, index: int, wait_s: float) -> Any:
        """The index-th query's vector (bytes), None when it gets none (exact layer only),
        or NOT_YET when it is not embedded within wait_s. Raises what stopped embedding."""
        with self._changed:
            self._changed.wait_for(lambda: index < len(self._rows) or self._done, wait_s)
            if index < len(self._rows):
                return self._rows[index]
            if self._error is not None:
                raise self._error
            return None if self._done else NOT_YET


def run_live(settings: Settings, items: Sequence[ReplayQuery], embeddings: LiveEmbeddings, jobs: int,
             on_row: Callable[[Row], None], stop: threading.Event, warn: Callable[[str], None]) -> None:
    """Each query through `Engine.ask` in up to `jobs` worker processes; rows reported as
    they finish."""
    from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

    from semcache_cli.storage import open_store

    # Created or migrated once, here: a bad path is a one-line error, not a broken worker.
    open_store(settings, warn=warn).close()
    context = _worker_context()
    worker_stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=max(1, min(jobs, len(items))), mp_context=context,
                               initializer=_start_worker, initargs=(settings, worker_stop))
    pending: set[Future[tuple[Row, list[str]]]] = set()
    submitted = 0

    def submit_ready() -> None:
        """Keep 2 x jobs queries in hand, each as soon as its vector is embedded."""
        nonlocal submitted
        while submitted < len(items) and len(pending) < jobs * 2 and not stop.is_set():
            vector = embeddings.vector(submitted, wait_s=0.0 if pending else 0.2)
            if vector is NOT_YET:
                return
            pending.add(pool.submit(_ask_in_worker, items[submitted], vector))
            submitted += 1

    try:
        with _sigterm_blocked():  # the first submits start the fork server and the workers
            while not pending and submitted < len(items) and not stop.is_set():
                submit_ready()
        while pending:
            done, pending = wait(pending, timeout=0.05 if submitted < len(items) else 0.2,
                                 return_when=FIRST_COMPLETED)
            for future in done:
                row, warnings = future.result()
                for message in warnings:
                    warn(message)
                on_row(row)
            submit_ready()
    except BrokenProcessPool:
        stop.set()
        worker_stop.set()
        raise SemcacheError("a replay worker process ended unexpectedly; answers stored so far are kept") from None
    except BaseException:
        stop.set()
        worker_stop.set()  # answers being streamed end at their next token, unstored
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        # Dropped now, while an error may still hold this frame: the CLI leaves with
        # os._exit, and a lock or event not collected by then is reported as leaked.
        pool = worker_stop = None  # type: ignore[assignment]


def _worker_context() -> Any:
    """Workers forked from a server process that imported this module and numpy once,
    not spawned one by one (each a fresh interpreter importing them)."""
    import multiprocessing
    import os

    # One BLAS thread per worker: the workers already fill the cores, and OpenBLAS threads
    # spinning after each small product took the CPU the other workers needed (-j 4 on 2
    # cores: 8.3 s against 5.3 s for 2,000 questions). Read when numpy loads, in the server.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__, "numpy"])
    return context


@contextmanager
def _sigterm_blocked() -> Iterator[None]:
    """SIGTERM held back (pending, not lost) while the fork server starts, so that it and
    every worker it forks start with SIGTERM blocked. Workers unblock it once their
    handler is in place; the fork server never does: SIGTERM sent to the whole group
    (a supervisor stopping it) would end it, and the pool would take that for the death
    of every worker and kill them mid-answer, claims held."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


_worker: dict[str, Any] = {}  # in a worker process: its settings, stop flag, engine, warnings


def _start_worker(settings: Settings, stop: Any) -> None:
    """Set up one worker process. Ctrl-C is the parent's to handle: it sets `stop`, and
    answers being streamed end at their next token, unstored. Writes are arbitrated by
    the store's own locks (SQLite's file locks), which a worker killed outright cannot
    leave held (a shared multiprocessing lock was ~5% faster, but one that dies with its
    holder stalls all)."""
    import multiprocessing
    from multiprocessing.util import Finalize

    import numpy  # noqa: F401  -- a long-lived worker ranks vectors faster with it (vectors.use_numpy)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_terminated)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # see _sigterm_blocked
    _worker.update(settings=settings, stop=stop, engine=None, warnings=[], asking=False, terminated=False)
    Finalize(None, _close_worker, exitpriority=10)  # run as the worker exits (atexit is not)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(parent_sentinel: int) -> None:
    """A worker outlives no parent: killed outright (SIGKILL), the parent cannot tell it
    to stop, and it would wait for work forever."""
    from multiprocessing.connection import wait as wait_for

    wait_for([parent_sentinel])
    os._exit(EXIT_TERMINATED)


def _worker_terminated(signum: int, frame: Any) -> None:
    """SIGTERM (a supervisor stopping the whole group, or the pool ending a broken run):
    a question in hand ends at its next token, unstored, its claim released, and then
    the worker exits. Only flags here: a second SIGTERM must not cut that unwinding short."""
    if not _worker.get("asking"):
        os._exit(EXIT_TERMINATED)
    _worker["terminated"] = True


def _close_worker() -> None:
    engine = _worker.get("engine")
    if engine is not None:
        engine.close()


def _ask_in_worker(item: ReplayQuery, vector: bytes | None) -> tuple[Row, list[str]]:
    """One query, in a worker process: its row and the warnings raised on the way."""
    from array import array

    settings, stop, warnings = _worker["settings"], _worker["stop"], _worker["warnings"]
    if stop.is_set():
        raise Stopped()

    def check_stop(_: str) -> None:
        if stop.is_set() or _worker["terminated"]:
            raise Stopped()

    request = request_from(settings_for(settings, item), item.query)
    request.metadata = {"label": item.label} if item.label is not None else None
    _worker["asking"] = True
    try:
        if _worker["engine"] is None:
            _worker["engine"] = open_engine(settings, warnings.append)
        outcome = _worker["engine"].ask(request, check_stop, array("f", vector) if vector is not None else None)
    except (OllamaUnreachable, ModelNotFound):
        raise  # every other query would fail the same way
    except SemcacheError as exc:
        row = Row(item.line, item.query, item.label, "error", error=str(exc))
    else:
        row = Row(item.line, item.query, item.label, outcome.source, miss_reason=outcome.miss_reason,
                  matched=outcome.entry_id if outcome.hit else None,
                  matched_label=outcome.metadata.get("label") if outcome.hit else None,
                  similarity=outcome.similarity, confidence=outcome.confidence, cosine=outcome.cosine,
                  saved_s=outcome.saved_s, saved_tokens=outcome.saved_tokens, miss_detail=outcome.miss_detail)
    finally:
        _worker["asking"] = False
        if _worker.get("terminated"):
            _close_worker()
            os._exit(EXIT_TERMINATED)
    raised = warnings[:]
    warnings.clear()
    return row, raised
