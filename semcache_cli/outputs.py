"""Files semcache writes for the user beside the store (`replay --out`): they hold
people's prompts, so a new one is created 0600 (an existing one readable by others is
warned about, as the store is), and the store itself is never one of them, whatever
the path says (a symlink, a hard link, a relative path, its write-ahead log)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from semcache_cli.config import is_database_url
from semcache_cli.errors import UsageError

_STORE_FILES = ("", "-wal", "-shm", "-journal")  # a SQLite store and the files beside it


def is_store_file(path: Path, store: str) -> bool:
    """`path` names the store `store` (a path or a URL), or a file SQLite keeps beside it."""
    if is_database_url(store):
        return False
    target = os.path.realpath(path)
    for suffix in _STORE_FILES:
        other = f"{store}{suffix}"
        if target == os.path.realpath(other):
            return True
        try:
            if os.path.samefile(path, other):  # a hard link, or another mount of it
                return True
        except OSError:
            pass  # one of them does not exist (yet)
    return False


def open_private(path: Path, store: str, what: str, warn: Callable[[str], None]) -> TextIO:
    """`path` opened for writing text, refused (before anything is written) when it is
    the store; created 0600 when new."""
    if is_store_file(path, store):
        raise UsageError(f"{what} {path} is the cache database itself; writing there would destroy it: "
                         "pick another file")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) and mode & (stat.S_IRGRP | stat.S_IROTH):
        warn(f"{path} is readable by other users and will hold your prompts: chmod 600 {path}")
    return os.fdopen(fd, "w", encoding="utf-8")
