"""Single-flight across processes: when many `semcache ask` processes miss on the same
question at once, one calls the model and the others wait for its answer.

The claim lives in the store itself (no lock files, no daemon; the SQLite backend keeps
it in a table of the cache file): one per (scope, exact key) being answered, with its
owner and a lease.
- The holder renews the lease from a background thread while the model streams, and
  deletes its claim when done, whether it stored an answer or failed.
- A waiter polls for the answer (the exact layer) and for the claim. When the claim is
  gone without an answer, or its lease ran out (the holder was killed), or the store can
  tell its holder is gone (SQLite: same host, process gone), the waiter takes it over:
  nobody waits forever.
- Waiting is bounded: past the deadline a waiter asks the model itself.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import TYPE_CHECKING

from semcache_cli.errors import SemcacheError

if TYPE_CHECKING:
    from semcache_cli.storage.port import Store

LEASE_S = 15.0  # a claim not renewed for this long is abandoned
RENEW_EVERY_S = 3.0
POLL_S = (0.02, 0.05, 0.1, 0.2)  # waiter's polling steps, then the last one repeated

HOST = socket.gethostname()


class _LeaseKeeper:
    """One thread per process renews the lease of every claim the process holds, with its
    own connection per store, while the threads that asked are blocked reading the
    model's stream (a cold model load can take minutes). Started with the first claim;
    a thread and a connection per claim cost each miss of a replay ~0.2 ms."""

    def __init__(self) -> None:
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._rounds = threading.Condition()
        self._begun = self._done = 0  # renewal rounds begun, finished

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._held[claim.owner] = claim
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="semcache-claim-leases", daemon=True)
                self._thread.start()

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(claim.owner, None)

    def renew_now(self, timeout: float) -> bool:
        """Wake the thread and wait for a round that began after this call (one under way
        may have read the old lease): a renewal seen without waiting out a lease."""
        with self._rounds:
            begun = self._begun
            self._wake.set()
            return self._rounds.wait_for(lambda: self._done > begun, timeout)

    def _run(self) -> None:
        connections: dict[str, Store] = {}  # by store location
        while True:
            self._wake.wait(RENEW_EVERY_S)
            with self._rounds:
                self._wake.clear()
                self._begun += 1
            self._renew(connections)
            with self._rounds:
                self._done += 1
                self._rounds.notify_all()

    def _renew(self, connections: dict[str, Store]) -> None:
        with self._lock:
            held = list(self._held.values())
        for claim in held:
            location = claim.store.location
            try:
                if location not in connections:
                    connections[location] = claim.store.reopen()
                connections[location].renew_claim(claim.scope, claim.key, claim.owner, LEASE_S)
            except SemcacheError:
                pass  # the next round tries again; the lease is long enough for a miss
        for location in connections.keys() - {c.store.location for c in held}:
            connections.pop(location).close()


_leases = _LeaseKeeper()
renew_now = _leases.renew_now


class Claim:
    """This process's claim on answering one (scope, exact key)."""

    def __init__(self, store: Store, scope: str, key: str) -> None:
        self.store = store
        self.scope = scope
        self.key = key
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False

    def try_take(self) -> bool:
        """Take the claim if nobody holds a live one. True when this process holds it."""
        # Held from before the store commits it: a signal raised between the commit and
        # the return still leaves the caller's `release` a claim to delete (deleting one
        # never committed is harmless).
        self.held = True
        self.held = taken = self.store.take_claim(self.scope, self.key, self.owner, HOST, os.getpid(), LEASE_S)
        if taken:
            _leases.hold(self)
        return taken

    def released_with_answer(self) -> None:
        """The store deleted this claim in the transaction that stored the answer."""
        self.held = False
        _leases.drop(self)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _leases.drop(self)
        self.store.release_claim(self.scope, self.key, self.owner)
