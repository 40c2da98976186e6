"""`semcache calibrate`: every embedding model's reference questions embedded again and
its similarity scale estimated again from them and the vectors the store holds now
(storage.scales; ask keeps them up to date as the cache grows, so this is for a store
changed by other means, or a model that failed on the reference questions before)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from semcache_cli.storage import scales

if TYPE_CHECKING:
    from semcache_cli.config import Settings


def run(settings: Settings, warn: Callable[[str], None]) -> dict[str, Any]:
    """The store's location and its models' new scales (scales.overview rows)."""
    from semcache_cli.engine import open_engine

    with open_engine(settings, warn, create=False) as engine:
        engine.recalibrate()
        return {"database": engine.store.location, "scales": scales.overview(engine.store)}
