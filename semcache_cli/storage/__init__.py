"""The cache store: the port every layer above uses (port.py), the records that cross it
(models.py), and its backends. `open_store` picks the backend from the database setting,
so nothing above this package names one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from semcache_cli.config import is_database_url
from semcache_cli.errors import UsageError

if TYPE_CHECKING:
    from semcache_cli.config import Settings
    from semcache_cli.storage.port import Store


def open_store(settings: Settings, warn: Callable[[str], None] | None = None, create: bool = True,
               read_only: bool = False) -> Store:
    """The store the settings name, created and migrated as needed (only the default
    location's directory is created on demand). create=False: one that must exist.
    read_only: for commands that only read, which never create a store: before the first
    ask has made the default file they see an empty cache; a named one must exist."""
    location = settings.db
    if is_database_url(location):
        scheme = location.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            # only a scheme is shown: the text before `://` may be anything, a password too
            named = f"{scheme}://" if re.fullmatch(r"[a-z][a-z0-9+.-]{0,30}", scheme) else "this URL"
            raise UsageError(f"{named} is not a kind of store semcache knows (a file path, or postgresql://)",
                             setting="db")
        try:
            from semcache_cli.storage.postgres import PostgresStore
        except ImportError:  # psycopg is an optional extra; the SQLite path never imports it
            # semcache is installed from its source tree (it is not on PyPI): the extra is
            # named from there, and its two packages for an install made otherwise.
            raise UsageError("postgresql:// stores need the PostgreSQL extra: pip install '.[postgres]' in semcache's "
                             "source tree (or pip install 'psycopg[binary]' pgvector)") from None
        return PostgresStore.open(location, settings.timeout, create=create and not read_only)
    from semcache_cli.storage.sqlite import SQLiteStore

    path = Path(location)
    if read_only and settings.db_is_default and not path.exists():
        return SQLiteStore.empty(path)
    return SQLiteStore.open(path, create_parent=settings.db_is_default, warn=warn, create=create,
                            read_only=read_only, private=settings.db_is_default)


def scratch_store(location: str) -> Store:
    """An empty store in memory, named after `location`: what an ask uses when the real
    one cannot be (damaged), so the pipeline runs unchanged and keeps nothing."""
    from semcache_cli.storage.sqlite import SQLiteStore

    return SQLiteStore.empty(Path(location))
