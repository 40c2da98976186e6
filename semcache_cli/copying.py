"""`semcache copy`: move a cache from one store to another (a SQLite file to a shared
PostgreSQL store, or back), entries with their vectors, hits and metadata.

Streamed in batches, so a large cache is never held in memory, each batch written in one
transaction of the target. Idempotent: an entry the target already has (same scope and
question) is left alone unless the source's answer is newer, so running it again adds
nothing. The request log stays behind: it is the history of the store it was made in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from semcache_cli.errors import UsageError
from semcache_cli.storage import open_store, scales
from semcache_cli.storage.models import Damaged
from semcache_cli.storage.selector import Selector

if TYPE_CHECKING:
    from semcache_cli.config import Settings

BATCH = 500


@dataclass
class CopyReport:
    source: str
    target: str
    read: int
    written: int  # added, or replacing an older answer
    damaged: int = 0  # entries of the source that could not be read as stored (repaired or left out)
    skipped: int = 0  # of those, left out: nothing in them could be trusted

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "unchanged": self.read - self.written}


def _same(a: str, b: str) -> bool:
    from semcache_cli.config import is_database_url

    if is_database_url(a) or is_database_url(b):
        return a == b
    from pathlib import Path

    from semcache_cli.outputs import is_store_file

    return is_store_file(Path(b), a)  # via a symlink or a hard link too


def run(settings: Settings, source: str, target: str, progress: Callable[[str, int], Callable[[int], None]],
        warn: Callable[[str], None]) -> CopyReport:
    """Copy every entry of `source` into `target` (created if it is new)."""
    from semcache_cli.config import database_setting

    source, target = database_setting(source, "--from"), database_setting(target, "--to")
    if _same(source, target):
        raise UsageError("--from and --to name the same store")
    with open_store(replace(settings, db=source, db_is_default=False), warn, read_only=True) as reader, \
            open_store(replace(settings, db=target, db_is_default=False), warn) as writer:
        advance = progress(f"copying to {writer.location}", reader.count())
        read = written = 0
        batch = []
        damaged = Damaged()
        for row in reader.entries(Selector(), time.time(), "oldest", 0, with_vectors=True, damaged=damaged):
            batch.append(row)
            if len(batch) == BATCH:
                written += writer.import_entries(batch)
                read += len(batch)
                advance(len(batch))
                batch = []
        if batch:
            written += writer.import_entries(batch)
            read += len(batch)
            advance(len(batch))
        if written:  # the models' scales from what the target holds now
            scales.rebuild_all(writer)
            writer.checkpoint()
        said = damaged.warning(reader.location, "copied")
        if said:
            warn(said)
        return CopyReport(reader.location, writer.location, read, written, len(damaged.met), damaged.skipped)
