"""What the user sees: the one-line status of an ask, warnings, errors, and the JSON
shapes. Plain text on purpose: the status line goes to stderr of every `ask`, and
importing Rich for one line would cost every exact hit.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from semcache_cli.engine import Outcome

PREFIX = "semcache"


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def elapsed(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def purge_line(report: dict[str, Any]) -> str:
    gone = report["matched"] + report["evicted"] if report["dry_run"] else report["deleted"] + report["evicted"]
    text = f"{'would purge' if report['dry_run'] else 'purged'} {gone:,} entr{'y' if gone == 1 else 'ies'}"
    if report["evicted"]:
        text += f" ({report['evicted']:,} least recently used)"
    if not report["dry_run"]:
        text += f", {human_bytes(report['bytes_freed'])} freed"
    if report["log_rows_deleted"]:
        text += f", {report['log_rows_deleted']:,} log rows"
    return f"{PREFIX}: {text}; {report['remaining']:,} left"


def status_line(outcome: Outcome) -> str:
    total = elapsed(outcome.timings_ms.get("total", 0.0))
    if outcome.hit:
        return (
            f"{PREFIX}: {outcome.source} hit · entry {outcome.entry_id} · "
            f"similarity {outcome.similarity:.3f} · confidence {outcome.confidence:.3f} · {total}"
        )
    reason = outcome.miss_reason or ""
    if outcome.similarity is not None:
        reason += f", best similarity {outcome.similarity:.3f}"
    stored = f"stored as entry {outcome.entry_id}" if outcome.stored else "not stored"
    return f"{PREFIX}: miss ({reason}) · answered by {outcome.model} · {stored} · {total}"


def warning_line(message: str) -> str:
    return f"{PREFIX}: warning: {message}"


def error_line(message: str) -> str:
    return f"{PREFIX}: error: {message}"


def outcome_json(outcome: Outcome) -> str:
    data: dict[str, Any] = {
        "response": outcome.response,
        "source": outcome.source,
        "hit": outcome.hit,
        "similarity": _rounded(outcome.similarity),
        "confidence": _rounded(outcome.confidence),
        "miss_reason": outcome.miss_reason,
        "entry_id": outcome.entry_id,
        "stored": outcome.stored,
        "model": outcome.model,
        "embed_model": outcome.embed_model,
        "namespace": outcome.namespace,
        "created_at": iso_time(outcome.created_at),
        "expires_at": iso_time(outcome.expires_at),
        "timings_ms": outcome.timings_ms,
        "warnings": outcome.warnings,
    }
    return json.dumps(data, ensure_ascii=False)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
