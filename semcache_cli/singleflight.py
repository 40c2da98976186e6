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


class Claim:
    """This process's claim on answering one (scope, exact key)."""

    def __init__(self, store: Store, scope: str, key: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.scope = scope
        self.key = key
        self.clock = clock
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

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
        self.held = True
        self._start_renewing()
        return True

    def _start_renewing(self) -> None:
        """A thread with its own connection keeps the lease alive while the main thread
        is blocked reading the model's stream (a cold model load can take minutes)."""
        path = self.store.path

        def renew() -> None:
            conn = sqlite3.connect(Path(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                while not self._stop.wait(RENEW_EVERY_S):
                    try:
                        conn.execute("UPDATE claims SET expires_at = ? WHERE scope = ? AND exact_key = ? AND owner = ?",
                                     (time.time() + LEASE_S, self.scope, self.key, self.owner))
                    except sqlite3.Error:
                        pass  # the next renewal tries again; the lease is long enough for a miss
            finally:
                conn.close()

        self._renewer = threading.Thread(target=renew, name="semcache-claim-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        self.held = False
        try:
            with self.store.transaction():
                self.store.conn.execute(
                    "DELETE FROM claims WHERE scope = ? AND exact_key = ? AND owner = ?",
                    (self.scope, self.key, self.owner),
                )
        finally:
            if self._renewer is not None:
                self._renewer.join(timeout=1.0)
