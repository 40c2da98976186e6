"""What the user sees: the one-line status of an ask, warnings, errors, and the JSON
shapes. Plain text on purpose: the status line goes to stderr of every `ask`, and
importing Rich for one line would cost every exact hit. Rich is imported only by the
tables of `inspect` and `stats`, on a terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from semcache_cli import policy
from semcache_cli.engine import AskRequest, Explanation, Judged, Outcome, Scale
from semcache_cli.storage.models import Entry

PREFIX = "semcache"
_SURROGATE = re.compile("[\ud800-\udfff]")


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """`1 entry`, `2 entries`, `1,000 vectors`: a number with its noun agreeing."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def elapsed(ms: float) -> str:
    if ms < 10:
        return f"{ms:.1f} ms"
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
    text = f"{'would purge' if report['dry_run'] else 'purged'} {counted(gone, 'entry', 'entries')}"
    if report["evicted"]:
        text += f" ({report['evicted']:,} least recently used)"
    if not report["dry_run"]:
        text += f", {human_bytes(report['bytes_freed'])} freed"
    elif report["max_bytes"] is not None:
        text += f", {human_bytes(report['bytes_freed'])} to free"
    if report["log_rows_deleted"]:
        text += f", {counted(report['log_rows_deleted'], 'log row')}"
    text += f"; {report['remaining']:,} left"
    if not report["dry_run"] and report["max_bytes"] is not None and report["bytes_in_use"] > report["max_bytes"]:
        text += (f"; still {human_bytes(report['bytes_in_use'])} in use, over --max-size "
                 "(entries used while it ran were kept)")
    return f"{PREFIX}: {text}"


def copy_line(report: dict[str, Any]) -> str:
    written, unchanged = report["written"], report["unchanged"]
    text = f"copied {counted(written, 'entry', 'entries')} from {report['source']} to {report['target']}"
    return f"{PREFIX}: {text}" + (f" ({unchanged:,} already there)" if unchanged else "")


def similarity_text(similarity: float, cosine: float | None, source: str = "semantic",
                    threshold: float | None = None) -> str:
    """The calibrated score (against the threshold it missed), with the raw cosine beside
    it where they differ in kind."""
    text = f"similarity {similarity:.3f}" + ("" if threshold is None else f" < threshold {threshold:.3f}")
    return text if source == "exact" or cosine is None else f"{text}, cosine {cosine:.3f}"


def calibrating_text(scale: Scale, embed_model: str) -> str:
    """Why a cache has no semantic hit yet (its model gave no reference vectors), and how
    to have them now."""
    return (f"calibrating: semantic hits start at {scale.needed} questions stored with "
            f"{policy.canonical_model(embed_model)}, {scale.vectors} so far; for hits now, `semcache calibrate` "
            "embeds the reference questions again, or `semcache replay FILE` warms the cache, or --scale cosine")


def made_from_text(made_from: dict[str, int] | None) -> str | None:
    """What a scale was made from, in words."""
    if made_from is None:
        return None
    own = f"{made_from['cache_vectors']:,} of the cache's distinct vectors"
    if not made_from["reference_questions"]:
        return own
    return f"{made_from['reference_questions']} reference questions and {own}"


def status_line(outcome: Outcome) -> str:
    total = elapsed(outcome.timings_ms.get("total", 0.0))
    if outcome.hit:
        return (
            f"{PREFIX}: {outcome.source} hit · entry {outcome.entry_id} · "
            f"{similarity_text(outcome.similarity or 0.0, outcome.cosine, outcome.source)} · "
            f"confidence {outcome.confidence:.3f} · {total}"
        )
    reason = with_detail(outcome.miss_reason or "", outcome.miss_detail)
    if reason == policy.CALIBRATING and outcome.calibration is not None:
        reason = calibrating_text(outcome.calibration, outcome.embed_model)
    elif outcome.similarity is not None:
        reason += f", best {similarity_text(outcome.similarity, outcome.cosine)}"
    stored = f"stored as entry {outcome.entry_id}" if outcome.stored else "not stored"
    return f"{PREFIX}: miss ({reason}) · answered by {outcome.model} · {stored} · {total}"


# What a terminal acts on instead of showing: the C0 controls but newline and tab (ESC
# starts every escape sequence: OSC 52 writes the clipboard, OSC 0 the title, OSC 8 makes
# links, CSI moves the cursor and clears the screen), DEL, the C1 controls (0x9B is a
# one-character CSI), and the invisible marks that reorder what is shown (bidirectional
# overrides and isolates). On a terminal they are shown as symbols instead: C0 and DEL as
# their Unicode control pictures (ESC is ␛), the rest as their code point (CSI is <U+009B>).
_HIDDEN_MARKS = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_TERMINAL_SAFE = str.maketrans({
    **{code: chr(0x2400 + code) for code in range(0x20) if code not in (0x09, 0x0A)},
    0x7F: "\u2421",
    **{code: f"<U+{code:04X}>" for code in [*range(0x80, 0xA0), *_HIDDEN_MARKS]},
})
# In JSON the same characters are written as \u escapes: the same data once parsed.
_JSON_SAFE = str.maketrans({code: f"\\u{code:04x}" for code in [0x7F, *range(0x80, 0xA0), *_HIDDEN_MARKS]})


def terminal_safe(text: str) -> str:
    """`text` with every character a terminal would act on shown as a symbol (newlines
    and tabs kept): for stored answers, questions and server messages written to a
    terminal. Piped output is never passed through it: scripts get the exact bytes."""
    return text.translate(_TERMINAL_SAFE)


def json_terminal_safe(text: str) -> str:
    """A JSON document for a terminal: json.dumps already escapes the C0 controls; DEL,
    the C1 controls and the hidden marks become \\u escapes too."""
    return text.translate(_JSON_SAFE)


def plain_line(message: str) -> str:
    """A status that is neither a warning nor an error (a choice the user made)."""
    return f"{PREFIX}: {message}"


def warning_line(message: str) -> str:
    return f"{PREFIX}: warning: {message}"


def error_line(message: str) -> str:
    return f"{PREFIX}: error: {message}"


def outcome_json(outcome: Outcome, question: str | None = None) -> str:
    """ask --json on success. Its first keys, `question`, `exit_code` and `error`, are in
    every object ask --json prints, so a script reads one shape (docs/json.md)."""
    data = {"question": question, "exit_code": 0, "error": None, **outcome_dict(outcome)}
    return json.dumps(data, ensure_ascii=False)


def outcome_dict(outcome: Outcome) -> dict[str, Any]:
    """An answer's fields, as ask --json prints them after its first keys (and the Python
    API's Answer.as_dict)."""
    return {
        "response": outcome.response,
        "source": outcome.source,
        "hit": outcome.hit,
        "similarity": _rounded(outcome.similarity),
        "cosine": _rounded(outcome.cosine),
        "confidence": _rounded(outcome.confidence),
        "miss_reason": outcome.miss_reason,
        "miss_detail": outcome.miss_detail,
        "entry_id": outcome.entry_id,
        "stored": outcome.stored,
        "model": outcome.model,
        "embed_model": outcome.embed_model,
        "namespace": outcome.namespace,
        "created_at": iso_time(outcome.created_at),
        "expires_at": iso_time(outcome.expires_at),
        "timings_ms": outcome.timings_ms,
        "warnings": outcome.warnings,
        "calibration": scale_dict(outcome.calibration),
    }


def failure_json(question: str | None, kind: str, message: str, exit_code: int, miss_reason: str | None) -> str:
    """ask --json when there is no answer: a miss under --cache-only (exit 3) or an error,
    with the same first keys as an answer and no answer in it."""
    data = {
        "question": _encodable(question),  # bad input may be why it failed: printed as it can be
        "exit_code": exit_code,
        "error": {"kind": kind, "message": _encodable(message)},
        "response": None,
        "source": None,
        "hit": False,
        "miss_reason": miss_reason,
    }
    return json.dumps(data, ensure_ascii=False)


def _encodable(text: str | None) -> str | None:
    """Text that can be written as UTF-8: a lone surrogate (bytes that were not UTF-8)
    becomes U+FFFD."""
    return None if text is None else _SURROGATE.sub("\ufffd", text)


def scale_dict(scale: Scale | None) -> dict[str, Any] | None:
    """The embedding model's scale as a lookup met it (None: no semantic layer ran)."""
    if scale is None:
        return None
    return {"state": scale.state, "vectors": scale.vectors, "needed": scale.needed,
            "estimated_from": scale.estimated_from, "median": _rounded(scale.median), "problem": scale.problem,
            "made_from": scale.made_from}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# -- inspect -----------------------------------------------------------------------------

def ago(seconds: float) -> str:
    """A compact age or span: 45s, 12m, 5h, 3d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def expires_text(entry: Entry, now: float) -> str:
    if entry.expires_at is None:
        return "never"
    return "expired" if entry.expires_at <= now else f"in {ago(entry.expires_at - now)}"


def one_line(text: str | None, width: int = 80) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(text: str) -> str:
    """A cell of tab-separated output, whole and reversible: backslash, tab, newline and
    carriage return become \\\\, \\t, \\n and \\r (PostgreSQL's COPY text format does
    the same), so each row is one line and every field can be read back exactly."""
    return text.translate(_TSV_ESCAPES)


def entry_dict(entry: Entry, now: float, vector: Sequence[float] | None = None,
               with_vector: bool = False) -> dict[str, Any]:
    fresh = policy.freshness(entry.created_at, entry.ttl, now)
    data: dict[str, Any] = {
        "id": entry.id,
        "query": entry.query,
        "response": entry.response,
        "namespace": entry.namespace,
        "model": entry.model,
        "system": entry.system,
        "options": entry.options,
        "format": entry.format,
        "embed_model": entry.embed_model,
        "dims": entry.dims,
        "created_at": iso_time(entry.created_at),
        "ttl_s": entry.ttl,
        "expires_at": iso_time(entry.expires_at),
        "expired": entry.expires_at is not None and entry.expires_at <= now,
        "freshness": _rounded(fresh),
        "confidence_now": _rounded(policy.confidence(1.0, fresh)),
        "hits": entry.hits,
        "last_hit_at": iso_time(entry.last_hit_at),
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "generation_s": entry.generation_s,
        "done_reason": entry.done_reason,
        "metadata": entry.metadata,
    }
    if with_vector:
        data["vector"] = [round(float(x), 7) for x in vector] if vector is not None else None
    return data


LIST_COLUMNS = ("id", "age", "expires", "hits", "namespace", "model", "query", "response")


def list_row(entry: Entry, now: float) -> tuple[str, ...]:
    return (str(entry.id), ago(now - entry.created_at), expires_text(entry, now), str(entry.hits),
            entry.namespace, entry.model, entry.query, entry.response)


def rich_table(columns: tuple[str, ...], rows: list[tuple[str, ...]], wide: tuple[str, ...] = ()) -> Any:
    """A Rich table whose cells are plain Text: stored prompts may contain [markup]."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False, expand=bool(wide))
    for i, name in enumerate(columns):
        # Short columns keep their full width; the wide text columns share the rest.
        fit = max([len(name), *(len(row[i]) for row in rows)])
        table.add_column(name, no_wrap=True, overflow="ellipsis", ratio=1 if name in wide else None,
                         min_width=None if name in wide else fit,
                         justify="right" if name in ("id", "hits", "#") else "left")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def entry_detail(entry: Entry, now: float) -> str:
    fresh = policy.freshness(entry.created_at, entry.ttl, now)
    if entry.expires_at is None:
        expiry = "never"
    elif entry.expires_at <= now:
        expiry = f"{iso_time(entry.expires_at)} (expired {ago(now - entry.expires_at)} ago)"
    else:
        expiry = f"{iso_time(entry.expires_at)} (in {ago(entry.expires_at - now)})"
    embedding = f"{entry.embed_model}, {entry.dims} dims" if entry.embed_model else "none (stored without a vector)"
    last_hit = f", last {iso_time(entry.last_hit_at)} ({ago(now - entry.last_hit_at)} ago)" if entry.last_hit_at else ""
    tokens = f"prompt {_or_unknown(entry.prompt_tokens)}, completion {_or_unknown(entry.completion_tokens)}"
    generated = f"{entry.generation_s:.2f} s" if entry.generation_s is not None else "unknown"
    fields = [
        ("query", entry.query),
        ("namespace", entry.namespace),
        ("model", entry.model),
        ("system", entry.system if entry.system is not None else "(none)"),
        ("options", json.dumps(entry.options, sort_keys=True)),
        ("format", json.dumps(entry.format) if entry.format is not None else "(none)"),
        ("embedding", embedding),
        ("created", f"{iso_time(entry.created_at)} ({ago(now - entry.created_at)} ago)"),
        ("ttl", ago(entry.ttl) if entry.ttl is not None else "never expires"),
        ("expires", expiry),
        ("confidence", f"{policy.confidence(1.0, fresh):.3f} if asked now as an exact hit (freshness {fresh:.3f})"),
        ("hits", f"{entry.hits}{last_hit}"),
        ("tokens", tokens),
        ("generation", f"{generated} (done_reason {entry.done_reason or 'unknown'})"),
        ("metadata", json.dumps(entry.metadata, sort_keys=True)),
    ]
    lines = [f"entry {entry.id}"] + [f"{name + ':':<12}{value}" for name, value in fields]
    lines.append("response:")
    lines.append(entry.response)
    return "\n".join(lines)


def _or_unknown(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def verdict_text(judged: Judged, served: Judged | None, rank: int, considered: int) -> str:
    if judged is served:
        return "served"
    if judged.verdict.serve:
        return "ok, not reached" if rank > considered or served is not None else "ok"
    if judged.verdict.reason == policy.NO_MATCH:
        return "below threshold"
    return with_detail(judged.verdict.reason or "", judged.verdict.detail)


def with_detail(reason: str, detail: str | None) -> str:
    """A miss reason with the words a guard fired on: `guard:negation: "off" vs "on"`."""
    return f"{reason}: {detail}" if detail else reason


SIMILAR_COLUMNS = ("#", "layer", "id", "similarity", "cosine", "freshness", "confidence", "verdict", "query")


def similar_row(judged: Judged, served: Judged | None, rank: int, considered: int, now: float) -> tuple[str, ...]:
    entry = judged.entry
    return (str(rank), judged.source, str(entry.id), f"{judged.similarity:.3f}", f"{judged.cosine:.3f}",
            f"{policy.freshness(entry.created_at, entry.ttl, now):.3f}", f"{judged.verdict.confidence:.3f}",
            verdict_text(judged, served, rank, considered), entry.query)


def candidate_dict(judged: Judged, served: Judged | None, rank: int, considered: int, now: float,
                   with_vectors: bool = False, vector: Sequence[float] | None = None) -> dict[str, Any]:
    entry = judged.entry
    return {
        "rank": rank,
        "source": judged.source,
        "entry_id": entry.id,
        "similarity": _rounded(judged.similarity),
        "cosine": _rounded(judged.cosine),
        "freshness": _rounded(policy.freshness(entry.created_at, entry.ttl, now)),
        "confidence": _rounded(judged.verdict.confidence),
        "verdict": verdict_text(judged, served, rank, considered),
        "guard_words": judged.verdict.detail,
        "served": judged is served,
        "entry": entry_dict(entry, now, vector, with_vectors),
    }


def decision_line(explanation: Explanation, request: AskRequest) -> str:
    decision = explanation.decision
    if decision.served is not None:
        served = decision.served
        return (f"ask would serve entry {served.entry.id} ({served.source} hit, "
                f"{similarity_text(served.similarity, served.cosine, served.source)}, "
                f"confidence {served.verdict.confidence:.3f})")
    why = with_detail(decision.miss_reason or policy.NO_MATCH, decision.detail)
    if why == policy.CALIBRATING and explanation.scale is not None:
        why = calibrating_text(explanation.scale, request.embed_model)
    elif decision.similarity is not None and why == policy.NO_MATCH:
        why += f", best {similarity_text(decision.similarity, decision.cosine, threshold=request.threshold)}"
    elif decision.similarity is not None:
        why += f", {similarity_text(decision.similarity, decision.cosine)}"
    if explanation.scale is not None and explanation.scale.state == "unusable":
        why += f"; semantic layer off: {explanation.scale.problem}"
    return f"ask would miss ({why}) and call the model"


def scale_line(explanation: Explanation) -> str | None:
    """The similarity scale inspect --similar judged on, and what it was made from."""
    scale = explanation.scale
    made = made_from_text(scale.made_from) if scale is not None else None
    return None if scale is None or made is None else f"similarity scale ({scale.state}) made from {made}"


def explanation_dict(explanation: Explanation, request: AskRequest, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    decision = explanation.decision
    served = decision.served
    return {
        "query": request.query,
        "namespace": request.scope.namespace,
        "model": policy.canonical_model(request.scope.model),
        "embed_model": policy.canonical_model(request.embed_model),
        "threshold": request.threshold,
        "min_confidence": request.min_confidence,
        "decision": {
            "hit": served is not None,
            "source": served.source if served else "model",
            "entry_id": served.entry.id if served else None,
            "miss_reason": decision.miss_reason,
            "miss_detail": decision.detail,
            "similarity": _rounded(decision.similarity),
            "cosine": _rounded(decision.cosine),
            "confidence": _rounded(decision.confidence),
        },
        "candidates": candidates,
        "calibration": scale_dict(explanation.scale),
    }


# -- stats -------------------------------------------------------------------------------

def span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 60 else f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def _breakdown(counts: dict[str, int]) -> str:
    return " · ".join(f"{name} {n:,}" for name, n in counts.items()) or "-"


def stats_text(figures: dict[str, Any], since_label: str) -> str:
    entries, req, sim = figures["entries"], figures["requests"], figures["similarity"]
    lines = [f"database     {figures['database']} ({human_bytes(figures['size_bytes'])} on disk)"]
    extent = ""
    if entries["total"]:
        extent = f"; oldest {iso_time(entries['oldest'])}, newest {iso_time(entries['newest'])}"
    lines += [
        f"entries      {entries['total']:,} ({entries['live']:,} live, {entries['expired']:,} expired){extent}",
        f"  namespace    {_breakdown(entries['by_namespace'])}",
        f"  model        {_breakdown(entries['by_model'])}",
        f"  embed model  {_breakdown(entries['by_embed_model'])}",
        "",
        f"requests ({since_label})",
        f"  asks         {req['asks']:,}",
    ]
    hits = req["hits"]
    rate = f" ({req['hit_rate']:.1%} hit rate)" if req["hit_rate"] is not None else ""
    lines += [
        f"  hits         {hits['total']:,}{rate}: exact {hits['exact']:,}, semantic {hits['semantic']:,}",
        f"  misses       {req['misses']['total']:,}: {_breakdown(req['misses']['by_reason'])}",
        f"  bypasses     {req['bypasses']:,}",
        f"  errors       {req['errors']:,}",
        f"  saved        {span(req['time_saved_s'])} of generation, {counted(req['tokens_saved'], 'token')}",
    ]
    for path, figures_ms in req["latency_ms"].items():
        lines.append(f"  latency      {path:<9}median {elapsed(figures_ms['median'])}, "
                     f"p95 {elapsed(figures_ms['p95'])} (n={figures_ms['count']:,})")
    lines += ["", f"similarity of semantic hits (█) and near-misses (░), threshold {sim['threshold']:.2f}"]
    peak = max([1, *(b["hits"] + b["near_misses"] for b in sim["bins"])])
    for b in sim["bins"]:
        count = b["hits"] + b["near_misses"]
        bar = ("█" if b["hits"] else "░") * round(30 * count / peak) if count else ""
        marker = "  ◀ threshold" if abs(b["low"] - sim["threshold"]) < 1e-9 else ""
        lines.append(f"  {b['low']:.2f}–{b['high']:.2f}  {bar}{' ' if bar else ''}{count:,}{marker}")
    if figures["scales"]:
        lines += ["", "similarity scales (semcache calibrate rebuilds them)"]
        lines += [f"  {scale_text(row)}" for row in figures["scales"]]
    if figures["top_entries"]:
        lines += ["", "top entries by hits"]
        lines += [f"  {e['hits']:>6,} {'hit ' if e['hits'] == 1 else 'hits'}  entry {e['id']}: {one_line(e['query'], 60)}"
                  for e in figures["top_entries"]]
    return "\n".join(lines)


def scale_text(row: dict[str, Any]) -> str:
    """One embedding model's scale, as scales.overview describes it."""
    head = f"{row['embed_model']} ({row['dims']} dims): {counted(row['vectors'], 'vector')}, "
    if row["state"] == "calibrating":
        return head + f"calibrating (semantic hits from {row['needed']} vectors)"
    if row["state"] == "unusable":
        return head + f"semantic layer off: {row['problem']}"
    text = head + (f"scale estimated from {row['estimated_from']:,}, {row['directions']} directions removed, "
                   f"unrelated pairs at cosine {row['median_cosine']:.2f}")
    made = made_from_text(row.get("made_from"))
    if made is not None:
        text += f"; made from {made}"
    return text + (f"; {row['degraded']}" if row.get("degraded") else "")


def stats_json(figures: dict[str, Any]) -> str:
    entries, req = figures["entries"], figures["requests"]
    data = {
        **figures,
        "entries": {**entries, "oldest": iso_time(entries["oldest"]), "newest": iso_time(entries["newest"])},
        "requests": {**req, "since": iso_time(req["since"])},
    }
    return json.dumps(data, ensure_ascii=False)


# -- replay ------------------------------------------------------------------------------

def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def replay_text(reports: list[dict[str, Any]], recommended: float | None, target_error: float | None) -> str:
    if len(reports) == 1:
        r = reports[0]
        rate = f" ({r['queries_per_s']:,.0f} queries/s)" if r["queries_per_s"] else ""
        lines = [
            f"replay ({r['mode']}{', interrupted' if r['interrupted'] else ''}): "
            f"{counted(r['queries'], 'query', 'queries')} in {r['seconds']:.1f} s{rate}",
            f"  hits         {r['hits']['total']:,} ({_percent(r['hit_rate'])}): exact {r['hits']['exact']:,}, "
            f"semantic {r['hits']['semantic']:,}",
            f"  misses       {sum(r['misses'].values()):,}: {_breakdown(r['misses'])}",
            f"  model calls  {r['model_calls']:,}",
            f"  errors       {r['errors']:,}",
        ]
        if r["labelled_hits"]:
            lines.append(f"  labelled     {r['correct_hits']:,} correct, {r['wrong_hits']:,} wrong: wrong-answer rate "
                         f"{_percent(r['wrong_answer_rate'], 2)} of queries, precision {_percent(r['precision'])}")
        lines.append(f"  saved        {span(r['time_saved_s'])} of generation, {counted(r['tokens_saved'], 'token')}")
        if r["bad_lines"]:
            lines.append(f"  skipped      {counted(r['bad_lines'], 'bad line')}")
        return "\n".join(lines)
    first = reports[0]
    lines = [f"replay ({first['mode']}): {counted(first['queries'], 'query', 'queries')} per threshold, "
             f"{len(reports)} thresholds in {sum(r['seconds'] for r in reports):.1f} s",
             f"{'threshold':>9}  {'hit rate':>8}  {'exact':>6}  {'semantic':>8}  {'wrong-answer rate':>17}  "
             f"{'precision':>9}"]
    for r in reports:
        mark = ""
        if recommended is not None and r["threshold"] == recommended:
            mark = f"  ← recommended (wrong answers ≤ {_percent(target_error, 2)})"
        lines.append(f"{r['threshold']:>9.2f}  {_percent(r['hit_rate']):>8}  {r['hits']['exact']:>6,}  "
                     f"{r['hits']['semantic']:>8,}  {_percent(r['wrong_answer_rate'], 2):>17}  "
                     f"{_percent(r['precision']):>9}{mark}")
    if target_error is not None and recommended is None:
        lines.append(f"no threshold keeps wrong answers at or under {_percent(target_error, 2)}")
    return "\n".join(lines)
