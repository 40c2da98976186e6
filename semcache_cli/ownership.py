"""Whether another user could change a file semcache trusts (the cache file: plant
answers, read the questions written to it; the config file: point the cache elsewhere):
the checks ssh and gnupg make of their own files.

The cache's own directory and its files must belong to this user and be writable by no
one else. Every directory above must belong to this user or to root, and be writable by
no one else unless it is sticky (a /tmp-like parent: others may add entries beside ours,
but not rename or remove ours). A directory writable by a user's private group (the
group of that name with no other member) counts as the user's own.

A default location (cache or config) is refused when it is unsafe (no one chose it: a
shared, world-writable XDG_CACHE_HOME is enough to make it someone else's); a cache path
the user named is their choice (a team's cache file, say), so it is only warned about.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _private_group(gid: int) -> bool:
    """The user's own group (user private groups): their primary group, named after
    them, with no other member listed."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return gid == os.getegid() and group.gr_name == user and set(group.gr_mem) <= {user}


def _others_may_write(info: os.stat_result) -> bool:
    if info.st_mode & stat.S_IWOTH:
        return True
    return bool(info.st_mode & stat.S_IWGRP) and not _private_group(info.st_gid)


def _owner_problem(path: Path, info: os.stat_result, me: int) -> str | None:
    if info.st_uid != me:
        return f"{path} belongs to another user (uid {info.st_uid})"
    if _others_may_write(info):
        return f"other users can write to {path} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def problem(path: Path) -> str | None:
    """Why another user could change the file at `path` (or its companions), or None.
    Parts that do not exist yet are skipped: what semcache creates is its own."""
    me = os.geteuid()
    directory = Path(os.path.realpath(path.parent))  # a link is judged by where it leads
    for own in (directory, directory / path.name, directory / f"{path.name}-wal", directory / f"{path.name}-shm"):
        try:
            info = os.stat(own)
        except FileNotFoundError:
            continue
        found = _owner_problem(own, info, me)
        if found:
            return found
    for ancestor in directory.parents:
        try:
            info = os.stat(ancestor)
        except FileNotFoundError:
            continue
        if info.st_uid not in (me, 0):
            return f"{ancestor}, above it, belongs to another user (uid {info.st_uid})"
        if _others_may_write(info) and not info.st_mode & stat.S_ISVTX:
            return (f"other users can write to {ancestor}, above it (mode {stat.S_IMODE(info.st_mode):o}, "
                    "not sticky), and so replace what it holds")
    return None


def named_problem(path: Path) -> str | None:
    """For a path the user named: only what no one would choose, a file of another user's
    or one anyone may write, or a directory anyone may replace it in (group-writable is
    a team's shared cache, and not reported)."""
    me = os.geteuid()
    try:
        info = os.stat(path)
    except OSError:
        info = None
    if info is not None and info.st_uid != me:
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info is not None and info.st_mode & stat.S_IWOTH:
        return f"any user can write to {path} (mode {stat.S_IMODE(info.st_mode):o})"
    try:
        parent = os.stat(path.parent)
    except OSError:
        return None
    if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        return f"any user can write to {path.parent} (mode {stat.S_IMODE(parent.st_mode):o}, not sticky)"
    return None
