"""Which entries a filter means: the value object `purge` and `inspect` build and each
backend translates into its own query."""

from __future__ import annotations

from dataclasses import dataclass, field

from semcache_cli import policy
from semcache_cli.config import valid_text


@dataclass
class Selector:
    """Selectors combine with AND. Times are relative to the `now` given with it."""

    expired: bool = False
    live: bool = False  # not expired
    older_than: float | None = None  # seconds: created longer ago than this
    namespace: str | None = None
    model: str | None = None
    embed_model: str | None = None
    ids: list[int] = field(default_factory=list)
    grep: str | None = None  # in the question or the answer, case-insensitive
    all: bool = False
    unused_since: float | None = None  # last used (hit, or stored) at or before this time

    def __post_init__(self) -> None:
        for name in ("namespace", "model", "embed_model", "grep"):  # text no store could be asked about
            value = getattr(self, name)
            if value is not None:
                valid_text(value, f"the {name.replace('_', ' ')} to select")
        # `llama3.2` names the entries stored as `llama3.2:latest`
        self.model = policy.canonical_model(self.model) if self.model else None
        self.embed_model = policy.canonical_model(self.embed_model) if self.embed_model else None

    def is_empty(self) -> bool:
        return not (self.expired or self.live or self.older_than is not None or self.namespace or self.model
                    or self.embed_model or self.ids or self.grep or self.all or self.unused_since is not None)
