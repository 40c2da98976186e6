"""Which entries a filter means: the selectors shared by `purge` and `inspect`, turned
into one WHERE clause whose user values are all bound parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from semcache_cli import policy


@dataclass
class Selector:
    expired: bool = False
    live: bool = False  # not expired
    older_than: float | None = None  # seconds
    namespace: str | None = None
    model: str | None = None
    embed_model: str | None = None
    ids: list[int] = field(default_factory=list)
    grep: str | None = None
    all: bool = False

    def is_empty(self) -> bool:
        return not (self.expired or self.live or self.older_than is not None or self.namespace or self.model
                    or self.embed_model or self.ids or self.grep or self.all)

    def where(self, now: float) -> tuple[str, list[Any]]:
        """A WHERE clause of fixed fragments; every user value is a bound parameter."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.expired:
            clauses.append("expires_at IS NOT NULL AND expires_at <= ?")
            params.append(now)
        if self.live:
            clauses.append("expires_at IS NULL OR expires_at > ?")
            params.append(now)
        if self.older_than is not None:
            clauses.append("created_at < ?")
            params.append(now - self.older_than)
        if self.namespace:
            clauses.append("namespace = ?")
            params.append(self.namespace)
        if self.model:
            clauses.append("model = ?")
            params.append(policy.canonical_model(self.model))
        if self.embed_model:
            clauses.append("embed_model = ?")
            params.append(policy.canonical_model(self.embed_model))
        if self.ids:
            clauses.append(f"id IN ({', '.join('?' for _ in self.ids)})")
            params.extend(self.ids)
        if self.grep:
            clauses.append("(instr(lower(query), lower(?)) > 0 OR instr(lower(response), lower(?)) > 0)")
            params.extend([self.grep, self.grep])
        return " AND ".join(f"({c})" for c in clauses) or "1", params
