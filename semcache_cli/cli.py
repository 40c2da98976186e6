"""The command line: parse, call one function, render. No SQL and no HTTP here.

Data goes to stdout (the raw answer, or one JSON object); status, warnings and errors go
to stderr, one line each. Every SemcacheError becomes its exit code in `_errors_to_exit`.

No `from __future__ import annotations` here: Typer reads these signatures at every start,
and string annotations make it compile and evaluate each one again (10 ms per process,
measured); real annotation objects are built once, when the module is imported.
"""


import io
import json
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # Typer's own Click
from typer.core import TyperGroup

from semcache_cli import __version__, config, render
from semcache_cli.engine import run_ask
from semcache_cli.errors import (
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_MODEL_MISSING,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    EXIT_UNREACHABLE,
    Interrupted,
    SemcacheError,
    Terminated,
    UsageError,
    exit_codes_help,
)

OPTION_FLAGS = ("-o", "--option")
GUARDS_HELP = ("Answer-safety guards on semantic hits: all, none, or some of negation,number,entity,direction. "
               "[default: all; env SEMCACHE_GUARDS]")
MARGIN_HELP = ("Margin rule: a semantic hit whose runner-up, another entry with another answer, is this close "
               "becomes a miss (ambiguous); 0 turns it off. [default: 0; env SEMCACHE_MARGIN]")


def join_option_pairs(args: list[str]) -> list[str]:
    """`-o KEY VALUE` (two words, as in llm and ollama run) becomes `-o KEY=VALUE`:
    Typer has no two-word repeatable option, so the pair is joined before parsing."""
    joined: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            joined.extend(args[i:])
            break
        if token in OPTION_FLAGS and i + 2 < len(args) and "=" not in args[i + 1]:
            joined.extend([token, f"{args[i + 1]}={args[i + 2]}"])
            i += 3
            continue
        joined.append(token)
        i += 1
    return joined


def usage_line(exc: ClickException, command_path: str | None = None) -> str:
    """Click's usage errors in semcache's own one-line style, with where to look:
    `No such option: -x` -> `semcache: error: no such option: -x (semcache ask --help)`.
    `command_path` names the command when Click's error carries no context (a missing
    option value)."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    text = text.replace(" (Possible options: ", "; did you mean ").replace(". Did you mean ", "; did you mean ")
    if "; did you mean " in text and text.endswith(")"):
        text = text[:-1] + "?"
    text = text[:1].lower() + text[1:]
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else command_path
    return render.error_line(text + (f" ({path} --help)" if path else ""))


@contextmanager
def _usage_errors(ctx: Any = None) -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:  # `semcache` alone: the help, as Click shows it
        raise
    except ClickException as exc:
        command = ctx.meta.get(_COMMAND_KEY) if ctx is not None else None
        path = f"{ctx.command_path} {command}" if command else ctx.command_path if ctx is not None else None
        _stderr(usage_line(exc, path))
        raise typer.Exit(exc.exit_code) from None


_COMMAND_KEY = "semcache.command"  # the command's name, in the root context's meta


class _SemcacheGroup(TyperGroup):
    """The root command. Every parse of the command line (the root's options, the
    command's name, the command's own options) happens inside make_context or invoke,
    so Click's usage errors are caught here and shown as one line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_option_pairs(list(args)))

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with _usage_errors():
            return super().make_context(info_name, args, parent, **extra)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta[_COMMAND_KEY] = name
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors(ctx):
            return super().invoke(ctx)


def _epilog(exit_codes: str, *examples: str) -> str:
    """Exit codes, then examples; `\b` keeps Click from rewrapping the example lines."""
    return exit_codes + "\n\n\b\nExamples:\n" + "\n".join(f"  {example}" for example in examples)


app = typer.Typer(
    name="semcache",
    cls=_SemcacheGroup,
    help="A semantic cache for LLM calls: answers repeat questions from a local SQLite file, asks Ollama otherwise.",
    epilog=_epilog(
        EXIT_CODES_HELP,
        'semcache ask "What is semantic caching?"',
        "semcache stats --since 7d",
        "semcache --install-completion",
    ),
    no_args_is_help=True,
    # --install-completion and --show-completion; main() leaves them out of a process
    # that runs a command, which cannot use them.
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# -q/--quiet of the running command: silent on success. Status lines, reports and
# progress bars go; what stays is data a script asked for (ask's answer, --json and
# --jsonl), warnings (each names something to fix) and errors. One command runs per
# process, and each sets this first, so a module-level switch is enough.
_quiet = False


def _set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def _status(line: str) -> None:
    if not _quiet:
        _stderr(line)


def _report(text: str) -> None:
    """A command's report for a person, on stdout (stats, replay, inspect's tables)."""
    if not _quiet:
        sys.stdout.write(text + "\n")


def _warn(message: str) -> None:
    _stderr(render.warning_line(message))


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    """The one place errors become a line on stderr and an exit code."""
    try:
        yield
    except SemcacheError as exc:
        _stderr(render.error_line(str(exc)))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _stderr(render.error_line("interrupted; nothing partial was stored"))
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Terminated:
        _stderr(render.error_line("terminated; nothing partial was stored"))
        raise typer.Exit(EXIT_TERMINATED) from None
    except (typer.Exit, typer.Abort):
        raise
    except BrokenPipeError:
        # The reader stopped reading (`semcache inspect | head`): its choice, not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
    except Exception as exc:
        if os.environ.get("SEMCACHE_DEBUG") == "1":
            raise
        _stderr(render.error_line(f"unexpected {type(exc).__name__}: {exc} (SEMCACHE_DEBUG=1 shows a traceback)"))
        raise typer.Exit(EXIT_RUNTIME) from None


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"semcache {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """A semantic cache for LLM calls."""


def _stdin_has_data(stream: Any) -> bool:
    """True for a pipe or a file; False for a terminal, /dev/null or a socket, where
    reading could hang or means nothing. In-memory streams (tests) count as data."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation, AttributeError):
        return stream is not None
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def read_question(argument: str | None) -> str:
    if argument is not None and argument != "-":
        return argument
    if not _stdin_has_data(sys.stdin):
        raise UsageError('no question given: semcache ask "your question" (or pipe one in with -)')
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the question on stdin is not valid UTF-8") from None


def write_all(text: str) -> None:
    """Write `text` to stdout with one os.write of all its bytes (looping only on a short
    write), so processes sharing one pipe or file never interleave inside it: a pipe
    keeps a write of up to PIPE_BUF (4 KiB on Linux) whole, a file every write. Streams
    without a file descriptor (tests' in-memory ones) get a plain write."""
    sys.stdout.flush()  # anything written before goes first
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, io.UnsupportedOperation, AttributeError):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    data = memoryview(text.encode("utf-8"))
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:  # a non-blocking stdout handed down by the parent
            import select

            select.select([], [fd], [])
            continue
        data = data[written:]


class _AnswerWriter:
    """Writes the answer raw to stdout. Streamed token by token when stdout is a
    terminal (a person watches it come); otherwise kept until the answer is complete and
    written with its newline in one write (write_all), as a cached answer always is, so
    `xargs -P 8 semcache ask` gets whole answers, one a line. A reader that goes away
    (`| head`) stops the writing, not the generation: the full answer is still stored."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.pending: list[str] = []
        self.wrote = False
        self.ends_with_newline = False
        self.closed = False

    def __call__(self, token: str) -> None:
        if self.stream:
            self._emit(token)
        else:
            self.pending.append(token)

    def whole(self, text: str) -> None:
        """A complete answer (a cache hit): text and newline in one write."""
        self.pending.append(text)
        self.finish()

    def partial(self) -> None:
        """The answer broke off: what came of it, as it is (a terminal gets its newline
        from finish, to keep the error line off the partial answer's line)."""
        if self.stream:
            self.finish()
        else:
            self._emit("".join(self.pending))
            self.pending.clear()

    def finish(self) -> None:
        """The end of the answer, or of what there is of it when it broke: the rest and
        a final newline, in one write."""
        text = "".join(self.pending)
        self.pending.clear()
        if text and not text.endswith("\n"):
            text += "\n"
        elif not text and self.wrote and not self.ends_with_newline:
            text = "\n"  # the streamed part's line
        self._emit(text)

    def _emit(self, text: str) -> None:
        if self.closed or not text:
            return
        try:
            write_all(text)
        except BrokenPipeError:
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return
        self.wrote = True
        self.ends_with_newline = text.endswith("\n")


def _option_pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"-o takes KEY VALUE (e.g. -o temperature 0), got {item!r}")
    return key.strip(), value


def _help(text: str, key: str | None = None, default: str | None = None) -> str:
    bits = []
    if default is None and key is not None:
        default = str(config.DEFAULTS[key])
    if default is not None:
        bits.append(f"default: {default}")
    if key is not None:
        bits.append(f"env {config.env_name(key)}")
    return f"{text} [{'; '.join(bits)}]" if bits else text


# The options ask, replay and inspect share, declared once. Each names a setting of
# config.py, so the flag overrides the config file and SEMCACHE_* variable of that name.
Model = Annotated[str | None, typer.Option("-m", "--model", help=_help("Generation model.", "model"))]
EmbedModel = Annotated[
    str | None, typer.Option("--embed-model", help=_help("Embedding model for the semantic layer.", "embed_model"))
]
System = Annotated[
    str | None, typer.Option("-s", "--system", help=_help("System prompt (part of the scope).", "system", "none"))
]
GenerationOption = Annotated[
    list[str] | None,
    typer.Option(
        "-o", "--option", metavar="KEY VALUE",
        help="Generation option, typed as Ollama expects (e.g. -o temperature 0; KEY=VALUE also works). "
        "Repeatable; part of the scope.",
    ),
]
Format = Annotated[
    str | None, typer.Option("--format", help="Ask for 'json' output or give a JSON schema (part of the scope).")
]
Namespace = Annotated[
    str | None, typer.Option("-n", "--namespace", help=_help("Namespace: answers never cross namespaces.", "namespace"))
]
Ttl = Annotated[
    str | None,
    typer.Option("--ttl", help=_help("How long a new answer may be reused: 90s, 10m, 2h, 7d or never.", "ttl", "7d")),
]
Threshold = Annotated[
    float | None, typer.Option("--threshold", help=_help("Least similarity for a semantic hit, on --scale.", "threshold"))
]
ScaleChoice = Annotated[
    str | None,
    typer.Option("--scale", help=_help("Similarity scale: calibrated (per embedding model, from the cache's own "
                                       "vectors) or cosine (raw; the right threshold then depends on the model).",
                                       "scale")),
]
MinConfidence = Annotated[
    float | None,
    typer.Option(
        "--min-confidence", help=_help("Least confidence (0.7*similarity + 0.3*freshness) to reuse.", "min_confidence")
    ),
]
Timeout = Annotated[
    str | None, typer.Option("--timeout", help=_help("How long to wait for Ollama to reply.", "timeout", "300s"))
]
Guards = Annotated[str | None, typer.Option("--guards", help=GUARDS_HELP)]
Margin = Annotated[float | None, typer.Option("--margin", help=MARGIN_HELP)]
Database = Annotated[
    str | None, typer.Option("--db", metavar="PATH", help="Cache database file. [env SEMCACHE_DB]")
]


Quiet = Annotated[
    bool,
    typer.Option("-q", "--quiet", help="Silent on success: no report or progress; --json output, warnings and "
                 "errors still print."),
]


def _settings(flags: dict[str, Any], option: list[str] | None = None) -> config.Settings:
    return config.load_settings(flags, [_option_pair(item) for item in option or []])


@app.command(no_args_is_help=False, epilog=_epilog(
    EXIT_CODES_HELP,
    'semcache ask "What is semantic caching?"',
    'git diff | semcache ask - -s "Review this diff." -o temperature 0',
    "tr '\\n' '\\0' < questions.txt | xargs -0 -P 8 -n 1 semcache ask -q",
))
def ask(
    question: Annotated[
        str | None,
        typer.Argument(help="The question. '-' or absent: read it from stdin when stdin is a pipe or file."),
    ] = None,
    model: Model = None,
    embed_model: EmbedModel = None,
    system: System = None,
    option: GenerationOption = None,
    format: Format = None,
    namespace: Namespace = None,
    ttl: Ttl = None,
    threshold: Threshold = None,
    min_confidence: MinConfidence = None,
    timeout: Timeout = None,
    guards: Guards = None,
    margin: Margin = None,
    scale: ScaleChoice = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Skip the lookup, ask the model, still store.")] = False,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not store a new answer.")] = False,
    cache_only: Annotated[bool, typer.Option("--cache-only", help="Never call the model; exit 3 on a miss.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the raw answer.")] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="Write a new answer as it streams even when stdout is not a terminal "
                           "(| tee); parallel runs may then interleave.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print only the answer: no status line (warnings and errors still).")
    ] = False,
    db: Database = None,
) -> None:
    """Answer from the cache when the same question, or one that means the same, was
    answered recently enough to trust; otherwise ask the model and store its answer."""
    _set_quiet(quiet)
    with _errors_to_exit():
        if cache_only and no_cache:
            raise UsageError("--cache-only and --no-cache contradict each other")
        settings = _settings(
            {"model": model, "embed_model": embed_model, "system": system, "namespace": namespace, "ttl": ttl,
             "threshold": threshold, "min_confidence": min_confidence, "timeout": timeout, "db": db,
             "guards": guards, "margin": margin, "scale": scale},
            option,
        )
        text = read_question(question)
        # Streamed to a terminal (or with --stream): a pipe's reader is a program that
        # wants whole answers, and with one write per answer parallel asks never interleave.
        writer = _AnswerWriter(stream=stream or sys.stdout.isatty())
        try:
            outcome = run_ask(
                settings, text, config.parse_format(format),
                lookup=not no_cache, store=not no_store, cache_only=cache_only,
                on_token=None if json_output else writer,
                warn=_warn, notice=lambda said: _status(render.plain_line(said)),
            )
        except BaseException:
            writer.partial()
            raise
        if json_output:
            writer.whole(render.outcome_json(outcome))
        elif outcome.hit:
            writer.whole(outcome.response)
        else:
            writer.finish()
        _status(render.status_line(outcome))


@app.command(epilog=_epilog(
    exit_codes_help(),
    "semcache purge --expired --dry-run",
    "semcache purge -n scratch --older-than 30d --json",
    "semcache purge -q --expired --max-size 500MB --log-older-than 90d --vacuum --yes   # nightly, from cron",
))
def purge(
    expired: Annotated[bool, typer.Option("--expired", help="Entries past their TTL.")] = False,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Entries created longer ago than this (30d).")] = None,
    namespace: Annotated[str | None, typer.Option("-n", "--namespace", help="Entries of this namespace.")] = None,
    model: Annotated[str | None, typer.Option("-m", "--model", help="Entries answered by this model.")] = None,
    embed_model: Annotated[str | None, typer.Option("--embed-model", help="Entries embedded with this model.")] = None,
    ids: Annotated[list[int] | None, typer.Option("--id", help="This entry (repeatable).")] = None,
    grep: Annotated[str | None, typer.Option("--grep", help="Entries whose question or answer contains TEXT.")] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Every entry (asks first; see --yes).")] = False,
    max_entries: Annotated[
        int | None, typer.Option("--max-entries", min=0, help="Then evict least recently used entries beyond N.")
    ] = None,
    max_size: Annotated[
        str | None, typer.Option("--max-size", help="Then evict least recently used entries until under SIZE (500MB).")
    ] = None,
    log_older_than: Annotated[
        str | None, typer.Option("--log-older-than", help="Also delete request-log rows older than this.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would go; change nothing.")] = False,
    vacuum: Annotated[bool, typer.Option("--vacuum", help="Reclaim the freed space on disk afterwards.")] = False,
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask before deleting every entry.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    quiet: Quiet = False,
    db: Database = None,
) -> None:
    """Delete entries by selector (selectors combine with AND), bound the entry count or
    the bytes in use, trim the request log. Cron-safe: never prompts without a terminal."""
    from semcache_cli import purge as purging
    from semcache_cli.storage.selector import Selector

    _set_quiet(quiet)
    with _errors_to_exit():
        settings = config.load_settings({"db": db})
        selector = Selector(
            expired=expired,
            older_than=config.parse_duration(older_than, "--older-than") if older_than else None,
            namespace=namespace, model=model, embed_model=embed_model, ids=ids or [], grep=grep, all=all_entries,
        )
        log_age = config.parse_duration(log_older_than, "--log-older-than") if log_older_than else None
        max_bytes = config.parse_size(max_size, "--max-size") if max_size else None
        if selector.is_empty() and max_entries is None and max_bytes is None and log_age is None:
            raise UsageError(
                "purge needs a selector (--expired, --older-than, --namespace, --model, --embed-model, --id, "
                "--grep, --all) or a bound (--max-entries, --max-size, --log-older-than)"
            )

        def confirm_all(total: int, location: str) -> bool:
            if yes:
                return True
            if not (sys.stdin.isatty() and sys.stderr.isatty()):
                raise UsageError(f"this would delete all {total:,} entries; pass --yes to confirm (no terminal to ask)")
            return _confirm(f"Delete all {total:,} entries of {location}?")

        report = purging.run(settings, selector, time.time(), max_entries=max_entries, max_bytes=max_bytes,
                             log_older_than=log_age, dry_run=dry_run, vacuum=vacuum, confirm_all=confirm_all,
                             warn=_warn)
        if report is None:  # the person said no: their choice, not an error
            _status(render.plain_line("nothing deleted"))
            return
        if json_output:
            sys.stdout.write(json.dumps(report.as_dict()) + "\n")
        _status(render.purge_line(report.as_dict()))


def _confirm(question: str) -> bool:
    """A y/N question on the terminal. Enter, end of input or anything but y/yes is no;
    Ctrl-C is an interrupt (exit 130), not Click's "Aborted!" (exit 1)."""
    try:  # from the prompt on: Ctrl-C may come as soon as it shows
        sys.stderr.write(f"{question} [y/N]: ")
        sys.stderr.flush()
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise Interrupted("interrupted; nothing deleted") from None
    if not answer.endswith("\n"):
        sys.stderr.write("\n")  # end of input: the next line starts on its own
    return answer.strip().lower() in ("y", "yes")


@app.command(epilog=_epilog(
    exit_codes_help(),
    "semcache stats",
    "semcache stats --since 7d --json",
    "semcache stats -q --db postgresql://cache@db.internal/semcache || echo 'cache store down'",
))
def stats(
    since: Annotated[str | None, typer.Option("--since", help="Only requests in this window (e.g. 7d). [default: all]")] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help=_help("Threshold the similarity histogram is drawn around.", "threshold"))
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
    quiet: Quiet = False,
    db: Database = None,
) -> None:
    """What is stored, and what the cache did: hits by layer, misses by reason, time and
    tokens saved, latency, and the similarity of hits and near-misses. With -q and no
    --json it prints nothing: a check that the store opens and can be read."""
    from semcache_cli import stats as statistics

    _set_quiet(quiet)
    with _errors_to_exit():
        settings = config.load_settings({"db": db, "threshold": threshold})
        window = config.parse_duration(since, "--since") if since else None
        figures = statistics.report(settings, time.time(), window, _warn)
        if json_output:
            sys.stdout.write(render.stats_json(figures) + "\n")
        else:
            _report(render.stats_text(figures, f"last {since}" if since else "all time"))


def _progress_factory(unit: str = "queries") -> Any:
    """Rich progress bars on stderr when it is a terminal (transient, with `unit`/s);
    nothing at all otherwise. Returns (factory, close): factory(description, total) gives
    an advance(n) callable."""
    if _quiet or not sys.stderr.isatty():
        return (lambda description, total: lambda n: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    bar.start()

    def factory(description: str, total: int) -> Any:
        task = bar.add_task(description, total=total, rate="")
        started = time.perf_counter()
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            elapsed = time.perf_counter() - started
            bar.update(task, advance=n, rate=f"{done / elapsed:,.0f} {unit}/s" if elapsed > 0 else "")

        return advance

    return factory, bar.stop


@app.command(epilog=_epilog(
    exit_codes_help(EXIT_UNREACHABLE, EXIT_MODEL_MISSING),
    "semcache replay questions.txt -j 4",
    "semcache replay --from-log --since 7d --dry-run",
    "semcache replay labelled.jsonl --simulate --thresholds 0.70:0.95:0.01 --target-error 0.005",
))
def replay(
    source: Annotated[
        str | None, typer.Argument(metavar="[FILE]", help="Queries: text (one a line) or JSONL; '-' for stdin.")
    ] = None,
    from_log: Annotated[bool, typer.Option("--from-log", help="Replay the questions of the request log.")] = False,
    since: Annotated[str | None, typer.Option("--since", help="With --from-log: only this window (7d).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Look up only: no model call, no write.")] = False,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Insert-on-miss into a throw-away cache: no model call, your cache untouched.")
    ] = False,
    thresholds: Annotated[
        str | None, typer.Option("--thresholds", help="With --simulate: 0.80,0.85,0.90 or 0.70:0.95:0.01.")
    ] = None,
    target_error: Annotated[
        float | None, typer.Option("--target-error", min=0.0, max=1.0,
                                   help="With --simulate and labels: recommend the threshold with the most hits "
                                   "whose wrong-answer rate stays at or under RATE (0.005 = 0.5%).")
    ] = None,
    shuffle: Annotated[int | None, typer.Option("--shuffle", metavar="SEED", help="Replay in a fixed shuffled order.")] = None,
    jobs: Annotated[int, typer.Option("-j", "--jobs", min=1, max=64, help="Live: model calls at once.")] = 4,
    strict: Annotated[bool, typer.Option("--strict", help="Abort (exit 2) on any bad line instead of skipping it.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write one JSON line per query (and threshold) here.")] = None,
    model: Model = None,
    embed_model: EmbedModel = None,
    system: System = None,
    option: GenerationOption = None,
    namespace: Namespace = None,
    ttl: Ttl = None,
    threshold: Threshold = None,
    min_confidence: MinConfidence = None,
    timeout: Timeout = None,
    guards: Guards = None,
    margin: Margin = None,
    scale: ScaleChoice = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    quiet: Quiet = False,
    db: Database = None,
) -> None:
    """Run many queries through the cache: warm it (live), see what it would do (--dry-run),
    or simulate from empty and sweep thresholds (--simulate)."""
    import threading

    from semcache_cli import replay as replaying

    _set_quiet(quiet)
    with _errors_to_exit():
        if dry_run and simulate:
            raise UsageError("--dry-run and --simulate: pick one")
        if (source is None) == (not from_log):
            raise UsageError("give a FILE of queries ('-' for stdin) or --from-log, not both")
        if not simulate and (thresholds or target_error is not None):
            raise UsageError("--thresholds and --target-error need --simulate")
        settings = _settings(
            {"model": model, "embed_model": embed_model, "system": system, "namespace": namespace, "ttl": ttl,
             "threshold": threshold, "min_confidence": min_confidence, "timeout": timeout, "db": db,
             "guards": guards, "margin": margin, "scale": scale},
            option,
        )
        sweep = replaying.parse_thresholds(thresholds) if thresholds else [settings.threshold]
        bad: list[replaying.BadLine] = []
        if from_log:
            window = config.parse_duration(since, "--since") if since else None
            items = replaying.from_log(settings, time.time() - window if window else None)
        else:
            items, bad = replaying.parse_lines(_read_lines(source or "-"), settings.max_query_chars)
        for problem in bad[:20]:
            _warn(f"{source}: line {problem.line}: {problem.reason}; {'aborting' if strict else 'skipped'}")
        if len(bad) > 20:
            _warn(f"{len(bad) - 20:,} more bad lines skipped")
        if bad and strict:
            raise UsageError(f"{len(bad):,} bad lines in {source} and --strict is set; nothing was replayed")
        if target_error is not None and not any(item.label for item in items):
            raise UsageError("--target-error needs labelled queries (JSONL with a \"label\")")

        plan = replaying.Plan("simulate" if simulate else "dry-run" if dry_run else "live", sweep, jobs, shuffle)
        warned: set[str] = set()

        def warn_once(message: str) -> None:
            if message not in warned:
                warned.add(message)
                _warn(message)

        rows_file = out.open("w", encoding="utf-8") if out else None
        factory, close_progress = _progress_factory()
        stop = threading.Event()

        def keep_row(row: Any) -> None:
            if rows_file:
                rows_file.write(json.dumps(row.as_dict(), ensure_ascii=False) + "\n")

        try:
            reports = replaying.execute(settings, items, plan, factory, keep_row, warn_once, stop)
        finally:
            close_progress()
            if rows_file:
                rows_file.close()
        for report in reports:
            report.bad_lines = len(bad)
        recommended = replaying.recommend(reports, target_error) if target_error is not None else None
        figures = [report.as_dict() for report in reports]
        if json_output:
            sys.stdout.write(json.dumps({"reports": figures, "target_error": target_error,
                                         "recommended_threshold": recommended.threshold if recommended else None}) + "\n")
        else:
            _report(render.replay_text(figures, recommended.threshold if recommended else None, target_error))
        if any(report.interrupted for report in reports):
            raise typer.Exit(EXIT_INTERRUPTED)
        if any(report.errors for report in reports):
            raise typer.Exit(EXIT_RUNTIME)


@app.command(name="copy", epilog=_epilog(
    exit_codes_help(),
    "semcache copy --from ~/.cache/semcache/cache.db --to postgresql://cache@db.internal/semcache",
    "semcache copy --from postgresql://cache@db.internal/semcache --to backup.db --json",
))
def copy_store(
    source: Annotated[str, typer.Option("--from", metavar="DB", help="The store to copy: a file path or a URL.")],
    target: Annotated[
        str, typer.Option("--to", metavar="DB", help="The store to copy into (created if new): a path or a URL.")
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    quiet: Quiet = False,
) -> None:
    """Copy every entry of one store into another (a SQLite file and a shared PostgreSQL
    store, either way), with vectors, hits and metadata. Running it again adds nothing:
    an entry already there is replaced only by a newer answer."""
    from semcache_cli import copying

    _set_quiet(quiet)
    with _errors_to_exit():
        settings = config.load_settings({})
        factory, close_progress = _progress_factory("entries")
        try:
            report = copying.run(settings, source, target, factory, _warn).as_dict()
        finally:
            close_progress()
        if json_output:
            sys.stdout.write(json.dumps(report) + "\n")
        _status(render.copy_line(report))


def _read_lines(source: str) -> list[bytes]:
    if source == "-":
        if not _stdin_has_data(sys.stdin):
            raise UsageError("replay - reads queries from stdin, but stdin is not a pipe or a file")
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else io.BytesIO(sys.stdin.read().encode())
        return stream.read().splitlines()
    try:
        with open(source, "rb") as handle:
            return handle.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None


def _write_json_stream(items: Iterable[dict[str, Any]], jsonl: bool) -> None:
    """An array (--json) or one object a line (--jsonl), written as the rows are read."""
    if jsonl:
        for item in items:
            sys.stdout.write(json.dumps(item, ensure_ascii=False) + "\n")
        return
    sys.stdout.write("[")
    for n, item in enumerate(items):
        sys.stdout.write(("," if n else "") + "\n" + json.dumps(item, ensure_ascii=False))
    sys.stdout.write("\n]\n")


def _write_table(columns: tuple[str, ...], rows: Iterable[tuple[str, ...]], wide: tuple[str, ...]) -> None:
    """A Rich table on a terminal, its text cells on one line and cut to fit; when piped,
    tab-separated lines with a header, every cell whole (render.tsv_field escapes tabs,
    newlines and backslashes). Nothing under -q."""
    if _quiet:
        for _ in rows:  # read to the end, so the store closes as it does otherwise
            pass
        return
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(render.rich_table(columns, [tuple(render.one_line(cell, 500) for cell in row) for row in rows],
                                          wide))
        return
    sys.stdout.write("\t".join(columns) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(render.tsv_field(cell) for cell in row) + "\n")


@app.command(epilog=_epilog(
    exit_codes_help(EXIT_UNREACHABLE, EXIT_MODEL_MISSING, when=" (--similar)"),
    "semcache inspect --grep password --limit 5",
    "semcache inspect 42 --json",
    'semcache inspect --similar "How could I reset my password?"',
))
def inspect(
    entry_id: Annotated[int | None, typer.Argument(metavar="[ID]", help="Show this entry whole.")] = None,
    similar: Annotated[
        str | None, typer.Option("--similar", metavar="TEXT", help="The nearest entries to TEXT and what ask would do.")
    ] = None,
    namespace: Namespace = None,
    model: Model = None,
    expired: Annotated[bool, typer.Option("--expired", help="Only entries past their TTL.")] = False,
    live: Annotated[bool, typer.Option("--live", help="Only entries not expired.")] = False,
    grep: Annotated[str | None, typer.Option("--grep", help="Only entries whose question or answer contains TEXT.")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="How many to list; 0 = all. [default: 20, 10 with --similar]")
    ] = None,
    sort: Annotated[str, typer.Option("--sort", help="newest, oldest, hits or last-hit.")] = "newest",
    system: System = None,
    option: GenerationOption = None,
    format: Format = None,
    embed_model: EmbedModel = None,
    threshold: Threshold = None,
    min_confidence: MinConfidence = None,
    guards: Guards = None,
    margin: Margin = None,
    scale: ScaleChoice = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON array (or object for ID).")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object a line, streamed.")] = False,
    with_vectors: Annotated[bool, typer.Option("--with-vectors", help="Include vectors in JSON output.")] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print only --json/--jsonl output: without them, nothing (exit 0: "
                           "the entry exists, the store opens).")
    ] = False,
    db: Database = None,
) -> None:
    """List entries (newest first), show one whole (ID), or explain a lookup (--similar):
    the nearest entries of the scope with similarity, freshness, confidence and the
    decision ask would make. -n and -m filter the listing; with --similar they, and the
    other options of ask, make the scope and the rules."""
    from semcache_cli import inspection
    from semcache_cli.storage.selector import Selector

    _set_quiet(quiet)
    with _errors_to_exit():
        if json_output and jsonl:
            raise UsageError("--json and --jsonl: pick one")
        if expired and live:
            raise UsageError("--expired and --live contradict each other")
        if entry_id is not None and similar is not None:
            raise UsageError("give an ID or --similar TEXT, not both")
        settings = _settings(
            {"db": db, "namespace": namespace, "model": model, "system": system, "embed_model": embed_model,
             "threshold": threshold, "min_confidence": min_confidence, "guards": guards, "margin": margin,
             "scale": scale},
            option,
        )
        now = time.time()
        if similar is not None:
            _inspect_similar(settings, similar, config.parse_format(format), limit if limit is not None else 10,
                             json_output, jsonl, with_vectors, now)
            return
        if entry_id is not None:
            entry, vector = inspection.show(settings, entry_id, _warn)
            if json_output or jsonl:
                sys.stdout.write(json.dumps(render.entry_dict(entry, now, vector, with_vectors),
                                            ensure_ascii=False) + "\n")
            else:
                _report(render.entry_detail(entry, now))
            return
        selector = Selector(expired=expired, live=live, namespace=namespace, model=model, grep=grep)
        rows = inspection.listing(settings, selector, now, sort, 20 if limit is None else limit, with_vectors, _warn)
        if json_output or jsonl:
            _write_json_stream((render.entry_dict(e, now, v, with_vectors) for e, v in rows), jsonl)
        else:
            _write_table(render.LIST_COLUMNS, (render.list_row(e, now) for e, _ in rows), ("query", "response"))


def _inspect_similar(settings: config.Settings, text: str, format: Any, limit: int,
                     json_output: bool, jsonl: bool, with_vectors: bool, now: float) -> None:
    from semcache_cli import inspection
    from semcache_cli.engine import request_from

    request = request_from(settings, text, format)
    explanation, vectors = inspection.explain(settings, request, limit, now, with_vectors, _warn)
    served = explanation.decision.served
    candidates = ([explanation.exact] if explanation.exact else []) + explanation.neighbours
    ranked = list(enumerate(candidates, start=1))
    considered = explanation.considered + (1 if explanation.exact else 0)
    if json_output or jsonl:
        rows = [render.candidate_dict(judged, served, rank, considered, now, with_vectors, vectors.get(judged.entry.id))
                for rank, judged in ranked]
        if jsonl:
            _write_json_stream(rows, jsonl=True)
        else:
            sys.stdout.write(json.dumps(render.explanation_dict(explanation, request, rows), ensure_ascii=False) + "\n")
        return
    _write_table(render.SIMILAR_COLUMNS,
                 (render.similar_row(judged, served, rank, considered, now) for rank, judged in ranked), ("query",))
    _report(render.decision_line(explanation, request))
    scale = render.scale_line(explanation)
    if scale is not None:  # a status, beside the table: on stderr
        _status(render.plain_line(scale))


@app.command(epilog=_epilog(
    exit_codes_help(),
    "semcache calibrate",
    "semcache calibrate --json --db postgresql://cache@db.internal/semcache",
))
def calibrate(
    json_output: Annotated[bool, typer.Option("--json", help="Print the scales as one JSON object.")] = False,
    quiet: Quiet = False,
    db: Database = None,
) -> None:
    """Estimate every embedding model's similarity scale again: its reference questions
    embedded again (one call per model), then the scale from them and the vectors the cache
    holds now. ask does this by itself (at a model's first question, at 32 vectors of it,
    then each time they double); run it after changing the store by other means, or when a
    model failed on the reference questions."""
    from semcache_cli import calibrate as calibration

    _set_quiet(quiet)
    with _errors_to_exit():
        report = calibration.run(config.load_settings({"db": db}), _warn)
        if json_output:
            sys.stdout.write(json.dumps(report) + "\n")
        elif not report["scales"]:
            _report(f"no question in {report['database']} has a vector yet: nothing to calibrate")
        else:
            _report("\n".join(render.scale_text(row) for row in report["scales"]))


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


COMPLETE_VAR = "_SEMCACHE_COMPLETE"


def _keep_only_invoked_command(args: list[str]) -> None:
    """Typer turns every registered command into a Click command before it runs one
    (about 10 ms each, measured); a process runs one command, so when the first
    argument names one, only that one is kept, and so are the root's completion options
    left out (they cannot follow a command). Help, unknown names and completion requests
    (which carry their words in the environment, not in args) keep all."""
    if args and not args[0].startswith("-") and COMPLETE_VAR not in os.environ:
        chosen = [info for info in app.registered_commands
                  if (info.name or getattr(info.callback, "__name__", None)) == args[0]]
        if chosen:
            app.registered_commands = chosen
            app._add_completion = False


def _completion_instruction() -> None:
    """Typer reads `_SEMCACHE_COMPLETE=source_bash` (its own order); Click's users write
    `bash_source`, which Typer would refuse ("Shell source not supported"): both work."""
    shell, sep, instruction = os.environ.get(COMPLETE_VAR, "").partition("_")
    if sep and instruction in ("source", "complete") and shell in ("bash", "zsh", "fish"):
        os.environ[COMPLETE_VAR] = f"{instruction}_{shell}"


def _leave(code: object) -> None:
    """Exit without Python's own shutdown (module teardown and collection: 10-25 ms per
    process, measured), which does nothing semcache needs: by now every connection is
    closed and every thread joined. Buffered output is flushed first."""
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def main() -> None:
    import signal

    # A background job of a non-interactive shell starts with SIGINT ignored, and Ctrl-C
    # (or kill -INT) would then leave a half-answered ask running: take the default back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)
    _keep_only_invoked_command(sys.argv[1:])
    if COMPLETE_VAR in os.environ:
        _completion_instruction()
    try:
        # One name however it was started (`python -m semcache_cli` too): the name in
        # messages, in completion scripts and in the variable they set.
        app(prog_name="semcache")
    except SystemExit as exc:
        _leave(exc.code)
    _leave(0)
