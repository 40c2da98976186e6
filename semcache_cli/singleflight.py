"""Single-flight across processes: when many `semcache ask` processes miss on the same
question at once, one calls the model and the others wait for its answer.

The claim lives in the `claims` table of the cache file itself (no lock files, no
daemon): one row per (scope, exact key) being answered, with its owner and a lease.
- The holder renews the lease from a background thread while the model streams, and
  deletes its claim when done, whether it stored an answer or failed.
- A waiter polls for the answer (the exact layer) and for the claim. When the claim is
  gone without an answer, or its lease ran out (the holder was killed), or the holder's
  process is gone (same host), the waiter takes the claim over: nobody waits forever.
- Waiting is bounded: past the deadline a waiter asks the model itself.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from semcache_cli.store import BUSY_TIMEOUT_S, Store

LEASE_S = 15.0  # a claim not renewed for this long is abandoned
RENEW_EVERY_S = 3.0
POLL_S = (0.02, 0.05, 0.1, 0.2)  # waiter's polling steps, then the last one repeated

HOST = socket.gethostname()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class _LeaseKeeper:
    """One thread per process renews the lease of every claim the process holds, with its
    own connection per cache file, while the threads that asked are blocked reading the
    model's stream (a cold model load can take minutes). Started with the first claim;
    a thread and a connection per claim cost each miss of a replay ~0.2 ms."""

    def __init__(self) -> None:
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, claim: Claim) -> None:
        with self._lock:
            self._held[claim.owner] = claim
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="semcache-claim-leases", daemon=True)
                self._thread.start()

    def drop(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop(claim.owner, None)

    def _run(self) -> None:
        connections: dict[Path, sqlite3.Connection] = {}
        while True:
            time.sleep(RENEW_EVERY_S)
            with self._lock:
                held = list(self._held.values())
            for claim in held:
                path = claim.store.path
                try:
                    if path not in connections:  # mode=rw: never create a file that is gone
                        connections[path] = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                                                            timeout=BUSY_TIMEOUT_S, isolation_level=None)
                    connections[path].execute(
                        "UPDATE claims SET expires_at = ? WHERE scope = ? AND exact_key = ? AND owner = ?",
                        (time.time() + LEASE_S, claim.scope, claim.key, claim.owner))
                except sqlite3.Error:
                    pass  # the next round tries again; the lease is long enough for a miss
            for path in connections.keys() - {c.store.path for c in held}:
                connections.pop(path).close()


_leases = _LeaseKeeper()


class Claim:
    """This process's claim on answering one (scope, exact key)."""

    def __init__(self, store: Store, scope: str, key: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.scope = scope
        self.key = key
        self.clock = clock
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False

    def try_take(self) -> bool:
        """Take the claim if nobody holds a live one. True when this process holds it."""
        now = self.clock()
        with self.store.transaction():
            row = self.store.conn.execute(
                "SELECT host, pid, expires_at FROM claims WHERE scope = ? AND exact_key = ?", (self.scope, self.key)
            ).fetchone()
            if row is not None and row[2] > now and not (row[0] == HOST and not _process_alive(row[1])):
                return False
            self.store.conn.execute(
                "INSERT OR REPLACE INTO claims (scope, exact_key, owner, host, pid, claimed_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.scope, self.key, self.owner, HOST, os.getpid(), now, now + LEASE_S),
            )
            # Before the commit: a signal raised between it and the return still leaves
            # `release` a row to delete (deleting one never committed is harmless).
            self.held = True
        _leases.hold(self)
        return True

    def released_with_answer(self) -> None:
        """The store deleted this claim in the transaction that stored the answer."""
        self.held = False
        _leases.drop(self)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _leases.drop(self)
        with self.store.transaction():
            self.store.conn.execute(
                "DELETE FROM claims WHERE scope = ? AND exact_key = ? AND owner = ?",
                (self.scope, self.key, self.owner),
            )
