"""`semcache calibrate`: every embedding model's similarity scale estimated again from
the vectors the store holds now (storage.scales; ask keeps them up to date as the cache
grows, so this is for a store changed by other means)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from semcache_cli.storage import open_store, scales

if TYPE_CHECKING:
    from semcache_cli.config import Settings


def run(settings: Settings, warn: Callable[[str], None]) -> dict[str, Any]:
    """The store's location and its models' new scales (scales.overview rows)."""
    with open_store(settings, warn, create=False) as store:
        scales.rebuild_all(store)
        return {"database": store.location, "scales": scales.overview(store)}
