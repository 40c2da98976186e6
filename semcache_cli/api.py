"""The Python API: the cache for programs, without a process per question.

    from semcache_cli.api import Cache

    with Cache("answers.db", ollama_host="127.0.0.1:11434", threshold=0.9) as cache:
        answer = cache.ask("What is semantic caching?")
        print(answer.response, answer.source)

A Cache is opened from its arguments and the defaults only: no config file, no SEMCACHE_*
variable, no OLLAMA_HOST, unless `Cache.from_environment()` asks for them. Errors are
the exception tree of `semcache_cli.errors`, their messages naming settings, never a
command-line flag.

Thread safety: one Cache may be shared by any number of threads. Each thread gets its own
connection to the store and to Ollama (made on its first ask), since neither a SQLite
connection nor an HTTP connection may be used by two threads at once; questions asked
by several threads (or processes) at once are answered once (single-flight).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from semcache_cli import config
from semcache_cli.engine import Engine, Outcome, open_engine, request_from, validate_query
from semcache_cli.errors import UsageError

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"


@dataclass(frozen=True)
class Answer:
    """One ask's outcome: the fields of `semcache ask --json`, with the same values
    (times as ISO 8601 text, similarity and confidence rounded to 6 places)."""

    response: str
    source: str  # exact | semantic | model
    hit: bool
    similarity: float | None
    cosine: float | None
    confidence: float | None
    miss_reason: str | None
    miss_detail: str | None  # a guard's: the words of the two questions it fired on
    entry_id: int | None
    stored: bool
    model: str
    embed_model: str
    namespace: str
    created_at: str | None
    expires_at: str | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> Answer:
        from semcache_cli import render

        return cls(**render.outcome_dict(outcome))

    def as_dict(self) -> dict[str, Any]:
        """The answer's fields of the object `ask --json` prints (which begins with the
        question, the exit code and the error)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Cache:
    """A semantic cache over one store (a SQLite file path or a postgresql:// URL) in
    front of one Ollama server. Every argument is checked here: a bad one raises
    `UsageError` naming it."""

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        ollama_host: str = DEFAULT_OLLAMA_HOST,
        model: str = config.DEFAULTS["model"],
        embed_model: str = config.DEFAULTS["embed_model"],
        namespace: str = config.DEFAULTS["namespace"],
        system: str | None = None,
        options: Mapping[str, Any] | None = None,
        threshold: float = config.DEFAULTS["threshold"],
        min_confidence: float = config.DEFAULTS["min_confidence"],
        ttl: float | str | None = config.DEFAULTS["ttl"],
        timeout: float | str = config.DEFAULTS["timeout"],
        guards: str = "all",
        margin: float = config.DEFAULTS["margin"],
        scale: str = config.DEFAULTS["scale"],
        max_query_chars: int = config.DEFAULTS["max_query_chars"],
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        values = {"model": model, "embed_model": embed_model, "namespace": namespace, "system": system,
                  "threshold": threshold, "min_confidence": min_confidence, "ttl": ttl, "timeout": timeout,
                  "guards": guards, "margin": margin, "scale": scale, "max_query_chars": max_query_chars}
        self._open(config.explicit_settings(os.fspath(db), ollama_host, values, options), on_warning)

    @classmethod
    def from_environment(cls, on_warning: Callable[[str], None] | None = None, **settings: Any) -> Cache:
        """A Cache set up as `semcache ask` would be: the config file, SEMCACHE_* and
        OLLAMA_HOST, with `settings` (the names of the constructor's arguments) over them."""
        options = settings.pop("options", None)
        host = settings.pop("ollama_host", None)
        resolved = config.load_settings(settings)
        if host is not None:
            resolved.ollama_url = config.parse_ollama_host(host)
        if options is not None:
            resolved.options = {**resolved.options,
                                **{key: config.parse_option(key, value, "options") for key, value in options.items()}}
        return cls.from_settings(resolved, on_warning)

    @classmethod
    def from_settings(cls, settings: config.Settings, on_warning: Callable[[str], None] | None = None) -> Cache:
        """A Cache on settings resolved already (config.load_settings)."""
        cache = cls.__new__(cls)
        cache._open(settings, on_warning)
        return cache

    def _open(self, settings: config.Settings, on_warning: Callable[[str], None] | None) -> None:
        self.settings = settings
        self._warn = on_warning or (lambda _: None)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._engines: list[tuple[threading.Thread, Engine]] = []
        self._closed = False
        self._first = open_engine(settings, self._warn)  # a store that cannot be opened fails here
        self._local.engine = self._first
        self._engines.append((threading.current_thread(), self._first))

    def engine(self) -> Engine:
        """This thread's engine (its own store connection and Ollama client)."""
        engine: Engine | None = getattr(self._local, "engine", None)
        if engine is not None:
            return engine
        from semcache_cli.ollama import OllamaClient

        with self._lock:
            if self._closed:
                raise UsageError("this Cache is closed")
            settings = self.settings
            engine = Engine(self._first.store.reopen(), lambda: OllamaClient(settings.ollama_url, settings.timeout),
                            warn=self._warn)
            self._engines.append((threading.current_thread(), engine))
        self._local.engine = engine
        return engine

    def release_thread(self) -> None:
        """Close this thread's connections now (a thread that is done with the Cache);
        its next ask opens new ones."""
        engine: Engine | None = getattr(self._local, "engine", None)
        if engine is None:
            return
        self._local.engine = None
        with self._lock:
            self._engines = [(thread, kept) for thread, kept in self._engines if kept is not engine]
        engine.close()

    def ask(
        self,
        question: str,
        *,
        system: str | None = None,
        options: Mapping[str, Any] | None = None,
        format: Any = None,
        namespace: str | None = None,
        model: str | None = None,
        lookup: bool = True,
        store: bool = True,
        cache_only: bool = False,
        on_token: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer `question` from the cache, or ask the model and store its answer.
        system, options, namespace and model override the Cache's for this question
        (each is part of the scope); format is "json" or a JSON schema. lookup=False
        skips the cache (still stores), store=False stores nothing, cache_only=True
        never calls the model (CacheOnlyMiss on a miss). on_token gets a new answer's
        text as it streams."""
        if self._closed:
            raise UsageError("this Cache is closed")
        if cache_only and not lookup:
            raise UsageError("cache_only and lookup=False contradict each other")
        settings = self.settings
        changes = {key: config.check_setting(key, value) for key, value in
                   (("system", system), ("namespace", namespace), ("model", model)) if value is not None}
        if options is not None:
            changes["options"] = {key: config.parse_option(key, value, "options") for key, value in options.items()}
        if changes:
            settings = replace(settings, **changes)
        if format is not None and format != "json" and not isinstance(format, dict):
            raise UsageError("format: use 'json' or a JSON schema (a dict)")
        if not isinstance(question, str):
            raise UsageError(f"question: expected a string, got {type(question).__name__}")
        request = request_from(settings, question, format, lookup=lookup, store=store, cache_only=cache_only)
        validate_query(request.query, request.max_query_chars)
        return Answer.from_outcome(self.engine().ask(request, on_token or (lambda _: None)))

    def close(self) -> None:
        """Close every thread's connections. Asking afterwards raises UsageError."""
        with self._lock:
            self._closed, engines, self._engines = True, self._engines, []
        for thread, engine in engines:
            if thread is threading.current_thread():
                engine.close()
            elif engine._client is not None:  # a SQLite connection may be closed only by its own
                engine._client.close()  # thread: dropped here, it is closed when collected

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

