"""One exception tree for everything semcache reports to a user.

Each class carries its exit code, so the CLI maps errors to codes in one place
(`SemcacheError.exit_code`) and every message is a single line that says what to do.
Connection and database errors are translated into these at the edge (ollama.py, storage/).
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CACHE_MISS = 3
EXIT_UNREACHABLE = 4
EXIT_MODEL_MISSING = 5
EXIT_STORE_UNREACHABLE = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM

_EXIT_MEANINGS = {
    EXIT_OK: "ok",
    EXIT_RUNTIME: "runtime failure",
    EXIT_USAGE: "usage or bad input",
    EXIT_CACHE_MISS: "miss under --cache-only",
    EXIT_UNREACHABLE: "Ollama unreachable or timed out",
    EXIT_MODEL_MISSING: "model not found",
    EXIT_STORE_UNREACHABLE: "the cache store (a PostgreSQL server) unreachable",
}


def exit_codes_help(*codes: int, when: str = "") -> str:
    """The exit codes one command can return, for its --help epilog. Every command may
    fail (1), be misused (2), find its store's server gone (6) or be interrupted
    (130/143); `codes` adds those only it can return, each followed by `when`."""
    base = {EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_STORE_UNREACHABLE}
    listed = "; ".join(f"{code} {_EXIT_MEANINGS[code]}{'' if code in base else when}"
                       for code in sorted(base | set(codes)))
    return f"Exit codes: {listed}; 130/143 interrupted (SIGINT/SIGTERM)."


EXIT_CODES_HELP = exit_codes_help(EXIT_CACHE_MISS, EXIT_UNREACHABLE, EXIT_MODEL_MISSING)


class SemcacheError(Exception):
    """Base of every error semcache reports; the message is one line for the user.

    Messages name settings as the library knows them (the store location, the timeout),
    never a command-line flag: `setting` says which one is at fault, and the CLI adds its
    flag where it turns the error into an exit code."""

    exit_code = EXIT_RUNTIME
    kind = "error"  # the error's name in JSON output (ask --json), stable for scripts

    def __init__(self, *args: object, setting: str | None = None) -> None:
        super().__init__(*args)
        self.setting = setting  # db, timeout, cache_only ... (kept by pickle: it is in __dict__)


class UsageError(SemcacheError):
    """Bad input or a bad setting: the user can fix the command line or config."""

    exit_code = EXIT_USAGE
    kind = "usage"


class StoreError(SemcacheError):
    """The cache database cannot be opened, read or written."""

    kind = "store"


class StoreDamaged(StoreError):
    """The store's file or data is damaged: refused, never written to."""

    kind = "store_damaged"


class StoreReadOnly(StoreError):
    """The store may be read but not written here: a read-only file, directory or mount,
    a role with SELECT only, a standby server. An ask still serves what it finds; the
    writes it could do without (counting a hit, the log, storing) are skipped."""


class StoreUnreachable(StoreError):
    """A store on a server cannot be reached, refuses the connection, or stopped
    answering (connection lost, statement timeout)."""

    exit_code = EXIT_STORE_UNREACHABLE
    kind = "store_unreachable"


class StoreFull(StoreError):
    """The disk (or the server's quota) is full; the store is left as it was."""

    kind = "store_full"


class UnreadableEntry(StoreError):
    """One stored entry cannot be decoded; the rest of the store is fine. `fields` names
    the damaged ones; `repaired` is the entry with them reset to neutral values (no hits,
    no metadata...) when none of them is the question, the answer, its scope or its
    dates, else None. Never served from: a listing may show or copy the repair."""

    kind = "unreadable_entry"

    def __init__(self, entry_id: int, fields: tuple[str, ...] = (), repaired: Any = None) -> None:
        super().__init__(f"entry {entry_id} of the cache cannot be read (its stored fields are damaged)")
        self.entry_id = entry_id
        self.fields = fields
        self.repaired: Any = repaired  # a storage.models.Entry (not imported: errors imports nothing)


class CacheOnlyMiss(SemcacheError):
    """--cache-only and nothing in the cache may answer."""

    exit_code = EXIT_CACHE_MISS
    kind = "cache_miss"

    def __init__(self, message: str, miss_reason: str | None = None) -> None:
        super().__init__(message, setting="cache_only")
        self.miss_reason = miss_reason  # why the cache could not answer, as ask --json says it

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:  # to cross from a replay worker process
        return type(self), (str(self), self.miss_reason)


class OllamaError(SemcacheError):
    """Ollama answered, but with an error (500, bad reply, refused request)."""

    kind = "ollama"


class OllamaUnreachable(OllamaError):
    """No answer at all: connection refused, DNS failure, or a timeout."""

    exit_code = EXIT_UNREACHABLE
    kind = "ollama_unreachable"


class ModelNotFound(OllamaError):
    """The requested model is not pulled on the Ollama server."""

    exit_code = EXIT_MODEL_MISSING
    kind = "model_not_found"

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # to cross from a replay worker process
        return type(self), (self.model, str(self))


class EmbedInputTooLong(OllamaError):
    """The query is longer than the embedding model's context (sent with truncate=false,
    so a long query is never silently cut and matched on its first part only): that
    query goes without the semantic layer."""

    kind = "embed_input_too_long"


class GenerationFailed(OllamaError):
    """The answer stream broke off: mid-stream error, dropped connection, bad JSON,
    or a truncated (done_reason "length") answer. Nothing is stored."""

    kind = "generation_failed"


class Interrupted(SemcacheError):
    """Ctrl-C where semcache was waiting for the user (a prompt): exit 130 with the
    usual one line, not Click's "Aborted!"."""

    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks run (claims released,
    transactions rolled back) before the process exits 143. A BaseException, like
    KeyboardInterrupt, so no `except Exception` swallows it."""
