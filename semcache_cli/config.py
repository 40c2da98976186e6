"""Settings and where they come from: defaults < config.toml < SEMCACHE_* environment
variables < command-line flags. Also paths, duration parsing, Ollama option typing and
OLLAMA_HOST parsing.

Every value from a file or the environment is validated here, with a message naming
where it came from, so a bad setting is a one-line usage error (exit 2), never a
traceback deep in the pipeline. platformdirs and tomllib are imported only when they
are needed, because every `semcache ask` is a fresh process.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcache_cli.errors import UsageError

APP_NAME = "semcache"
DEFAULT_OLLAMA_PORT = 11434

DEFAULTS: dict[str, Any] = {
    "model": "llama3.2",
    "embed_model": "nomic-embed-text",
    "threshold": 0.84,  # on the calibrated scale (vectors.py): the same on every embedding model
    "min_confidence": 0.7,
    "ttl": 7 * 86400.0,
    "namespace": "default",
    "system": None,
    "timeout": 300.0,
    # The longest question: a few MB (a large `git diff`), answered and cached exactly; only
    # the semantic layer skips what the embedding model's context cannot take.
    "max_query_chars": 4_000_000,
    "guards": ("negation", "number", "entity", "direction"),  # all of guards.GUARDS
    "margin": 0.0,
    "scale": "calibrated",  # or "cosine": the raw cosine, as before the calibrated scale
    "strict_cache": False,  # True: a damaged cache fails the ask instead of being left out of it
}

SCALES = ("calibrated", "cosine")

# The most semcache reads of one input it does not control the size of: a question on
# stdin, one line of a replay file. Past it the command stops (exit 2) rather than hold
# an endless pipe in memory. Room for the longest question max_query_chars allows by
# default in UTF-8's widest characters, so that rule, not this bound, speaks to a long one.
MAX_INPUT_BYTES = 16_000_000
MAX_CONFIG_BYTES = 1_000_000  # a config file is a few lines; a larger one is not one

# Every option of Ollama's API (the Options and Runner structs of ollama/api/types.go,
# from v0.1.35, when the last model-shape options went, to today; older servers ignore
# the ones they lack), typed as Ollama decodes them: a wrong type fails the request.
OPTION_TYPES: dict[str, type] = {
    # sampling and prediction: they change the answer
    "temperature": float,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "tfs_z": float,
    "repeat_penalty": float,
    "repeat_last_n": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "penalize_newline": bool,
    "mirostat": int,
    "mirostat_tau": float,
    "mirostat_eta": float,
    "stop": list,
    # the context: what the model sees of a long conversation, so the answer too
    "num_ctx": int,
    "num_keep": int,
    # how and where the model runs: the same question gets the same kind of answer
    "num_thread": int,
    "num_gpu": int,
    "main_gpu": int,
    "num_batch": int,
    "use_mmap": bool,
    "use_mlock": bool,
    "numa": bool,
    "low_vram": bool,
    "f16_kv": bool,
    "logits_all": bool,
    "vocab_only": bool,
    "draft_num_predict": int,
}

# Options that only say how the model is run: threads, GPU layers, batch size, memory
# mapping and locking, NUMA, KV-cache precision, speculative drafting. They are sent to
# Ollama but are no part of the cache scope, so an answer found with 8 threads serves
# an ask with 4. (At most they shift floating-point rounding, as a different machine
# would; what the question asks and how the answer is sampled stay the same.)
RUNTIME_OPTIONS = frozenset({
    "num_thread", "num_gpu", "main_gpu", "num_batch", "use_mmap", "use_mlock", "numa", "low_vram", "f16_kv",
    "logits_all", "vocab_only", "draft_num_predict",
})


def scope_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that are part of the cache scope: all but the runtime ones."""
    return {key: value for key, value in options.items() if key not in RUNTIME_OPTIONS}


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.IGNORECASE)
# The longest duration semcache takes (a TTL, --older-than, --timeout ...): 100 years. A
# longer TTL would put an entry's expiry past what a date can say; `never` is the way.
MAX_DURATION_S = 100 * 365.25 * 86400
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


DURATION_FORMS = "units ms, s, m, h, d, w: e.g. 90s, 10m, 2h, 7d, 1h30m"
SIZE_FORMS = "units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB: e.g. 500MB, 2GB, 64MiB, 4096B"


def parse_duration(text: str, what: str = "duration") -> float:
    """'90s', '10m', '2h', '7d', '1w', '1h30m'. Every number needs its unit: a bare `5`
    could mean 5 seconds or 5 days, and a TTL or a purge age mistaken by that much is
    silent damage, so it is a usage error that names the forms."""
    cleaned = text.strip().lower()
    pos, parts = 0, []
    while pos < len(cleaned):
        match = _DURATION_PART.match(cleaned, pos)
        if not match:
            break
        parts.append((match.group(1), match.group(2)))
        pos = match.end()
        while pos < len(cleaned) and cleaned[pos] == " ":
            pos += 1
    total = sum(float(number) * _UNIT_SECONDS[unit or "s"] for number, unit in parts)
    if not cleaned or pos != len(cleaned) or not math.isfinite(total):
        raise UsageError(f"{what}: {text!r} is not a duration (use e.g. 90s, 10m, 2h, 7d)")
    bare = [number for number, unit in parts if unit is None]
    if bare and len(parts) == 1:
        raise UsageError(f"{what}: {bare[0]!r} has no unit: write {bare[0]}s, {bare[0]}m, {bare[0]}h or {bare[0]}d "
                         f"({DURATION_FORMS})")
    if bare:
        raise UsageError(f"{what}: {text.strip()!r}: {bare[0]} has no unit ({DURATION_FORMS})")
    return _bounded(total, what, text)


def _bounded(seconds: float, what: str, given: Any) -> float:
    if seconds > MAX_DURATION_S:
        raise UsageError(f"{what}: {given!r} is longer than semcache allows (100 years; a TTL can be 'never')")
    return seconds


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib|k|m|g|t)?", re.IGNORECASE)
_UNIT_BYTES = {
    "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4,
    "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_size(text: str, what: str = "size") -> int:
    """'500MB', '1.5GB', '64MiB', '10k', '4096B' (decimal units, as `semcache stats`
    prints them; KiB/MiB/GiB for binary ones). A bare number is refused: `500` meant as
    megabytes would be 500 bytes, a bound that evicts everything."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what}: {text!r} is not a size (use e.g. 500MB, 2GB, 64MiB)")
    if match.group(2) is None:
        raise UsageError(f"{what}: {text.strip()!r} has no unit: write {match.group(1)}MB, {match.group(1)}GB, "
                         f"or {match.group(1)}B for bytes ({SIZE_FORMS})")
    size = float(match.group(1)) * _UNIT_BYTES[match.group(2).lower()]
    if not math.isfinite(size):
        raise UsageError(f"{what}: {text!r} is too large")
    return int(size)


def parse_ttl(value: Any, what: str = "ttl") -> float | None:
    """A TTL in seconds, or None for 'never'."""
    if isinstance(value, str) and value.strip().lower() in {"never", "none", "forever"}:
        return None
    seconds = _to_seconds(value, what)
    if seconds <= 0:
        raise UsageError(f"{what}: must be positive, or 'never'")
    return seconds


def _to_seconds(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise UsageError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, (int, float)):  # a config file's number: as ambiguous as a bare one on the command line
        raise UsageError(f"{what}: {value!r} has no unit: write it as a string, \"{value}s\" or \"{value}d\" "
                         f"({DURATION_FORMS})")
    if isinstance(value, str):
        return parse_duration(value, what)
    raise UsageError(f"{what}: expected a duration, got {value!r}")


def _unit_interval(value: Any, what: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (0.0 <= number <= 1.0):
        raise UsageError(f"{what}: {value!r} is not a number between 0 and 1")
    return number


def _positive_seconds(value: Any, what: str) -> float:
    seconds = _to_seconds(value, what)
    if seconds <= 0:
        raise UsageError(f"{what}: must be a positive duration")
    return seconds


def _positive_int(value: Any, what: str) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise UsageError(f"{what}: {value!r} is not a positive whole number")
    return number


def valid_text(value: str, what: str) -> str:
    """Text that is valid UTF-8 with no NUL: a byte that is not UTF-8 reaches Python (in
    argv, the environment) as a lone surrogate, which no store or server can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what}: not valid UTF-8") from None
    if "\x00" in value:
        raise UsageError(f"{what}: contains a NUL byte")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{what}: expected a non-empty string, got {value!r}")
    return valid_text(value.strip(), what)


def _optional_text(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UsageError(f"{what}: expected a string, got {value!r}")
    return valid_text(value, what)


def _scale_name(value: Any, what: str) -> str:
    if value not in SCALES:
        raise UsageError(f"{what}: expected one of {', '.join(SCALES)}, got {value!r}")
    return str(value)


def _switch(value: Any, what: str) -> bool:
    """A yes/no setting: a TOML boolean, or true/false, 1/0, yes/no, on/off as text."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in {"true", "1", "yes", "on"}:
        return True
    if lowered in {"false", "0", "no", "off"}:
        return False
    raise UsageError(f"{what} takes true or false, got {value!r}")


def _guard_names(value: Any, what: str) -> tuple[str, ...]:
    from semcache_cli import guards

    text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    try:
        return guards.parse(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "model": _text,
    "embed_model": _text,
    "threshold": _unit_interval,
    "min_confidence": _unit_interval,
    "ttl": parse_ttl,
    "namespace": _text,
    "system": _optional_text,
    "timeout": _positive_seconds,
    "max_query_chars": _positive_int,
    "guards": _guard_names,
    "margin": _unit_interval,
    "scale": _scale_name,
    "strict_cache": _switch,
}


def env_name(key: str) -> str:
    return f"SEMCACHE_{key.upper()}"


def parse_option(key: str, raw: Any, what: str = "-o") -> Any:
    """Type one Ollama option; raw is a command-line string or a TOML value."""
    kind = OPTION_TYPES.get(key)
    if kind is None:
        import difflib

        close = difflib.get_close_matches(key, OPTION_TYPES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"{what}: unknown option {key!r} ({hint}Ollama's options: {', '.join(sorted(OPTION_TYPES))})")
    if kind is list:  # stop: strings, each one text a store and a server can take
        items = list(raw) if isinstance(raw, list) else [str(raw)]
        if not all(isinstance(item, str) for item in items):
            raise UsageError(f"{what}: {key} takes strings, got {raw!r}")
        return [valid_text(item, f"{what}: {key}") for item in items]
    if kind is bool:
        return _switch(raw, f"{what}: {key}")
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = kind(raw)
        if kind is int and isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"{what}: {key} takes {'a whole number' if kind is int else 'a number'}, got {raw!r}") from None
    if kind is float and not math.isfinite(value):
        raise UsageError(f"{what}: {key} takes a finite number, got {raw!r}")
    return value


def parse_options(pairs: list[tuple[str, str]], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge `-o KEY VALUE` pairs over base options; repeated `-o stop X` accumulate."""
    options = dict(base or {})
    seen_stop = False
    for key, raw in pairs:
        value = parse_option(key, raw)
        if key == "stop":
            options["stop"] = (options["stop"] if seen_stop else []) + value
            seen_stop = True
        else:
            options[key] = value
    return options


def parse_ollama_host(raw: str | None) -> str:
    """Base URL from OLLAMA_HOST, read as ollama-python's _parse_host does, plus the two
    things the Go CLI adds: surrounding whitespace is trimmed, and 0.0.0.0 / :: (server
    bind addresses) mean this machine. What ollama-python would turn into a wrong URL
    without a word (port 0 or past 65535, a port that is not a number, `http://` with no
    host, spaces or control characters inside) is a usage error. Credentials in the value
    are dropped, and never shown in a message."""
    text = (raw or "").strip()
    # No credentials in messages: everything up to the last `@` of the authority (a
    # password may hold an `@` of its own) is hidden.
    shown = re.sub(r"^([a-z]+://)?[^/]*@", r"\1…@", text, flags=re.IGNORECASE)
    if not text.isprintable() or any(ch.isspace() for ch in text):
        raise UsageError(f"OLLAMA_HOST: {shown!r} has a space or control character inside")
    port = DEFAULT_OLLAMA_PORT
    scheme, sep, hostport = text.partition("://")
    if not sep:
        scheme, hostport = "http", text
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    else:
        raise UsageError(f"OLLAMA_HOST: unsupported scheme {scheme!r} in {shown!r} (use http or https)")
    try:
        split = urllib.parse.urlsplit(f"{scheme}://{hostport}")
    except ValueError:  # an unclosed or not-IPv6 bracket
        raise UsageError(f"OLLAMA_HOST: cannot parse {shown!r} (an IPv6 address goes in brackets, e.g. [::1]:11434)") from None
    hostinfo = split.netloc.rpartition("@")[2]
    if sep and not hostinfo:
        raise UsageError(f"OLLAMA_HOST: {shown!r} has no host after {scheme}:// (e.g. {scheme}://127.0.0.1:11434)")
    if hostinfo.startswith("["):
        name, bracket, port_text = hostinfo[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise UsageError(f"OLLAMA_HOST: cannot parse {shown!r} (an IPv6 address goes in brackets, e.g. [::1]:11434)")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise UsageError(f"OLLAMA_HOST: {name!r} in {shown!r} is not an IPv6 address") from None
    elif hostinfo.count(":") > 1:
        raise UsageError(f"OLLAMA_HOST: cannot parse {shown!r} (IPv6 addresses need brackets, e.g. [::1]:11434)")
    else:
        name, _, port_text = hostinfo.partition(":")
    if port_text:
        # str.isdigit() alone would take '²' or '٨'; int() would take '+80'.
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"OLLAMA_HOST: the port {port_text!r} in {shown!r} is not a number from 1 to 65535")
        port = int(port_text)
    host = name.lower() or "127.0.0.1"
    if not host.startswith("[") and not re.fullmatch(r"[a-z0-9_.-]+|[0-9a-f:.%]+", host):
        try:
            host = host.encode("idna").decode("ascii")  # an international name, as DNS spells it
        except UnicodeError:
            raise UsageError(f"OLLAMA_HOST: {name!r} in {shown!r} is not a host name") from None
    if host in {"0.0.0.0", "::"}:
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass
    path = urllib.parse.quote(split.path.strip("/"), safe="/%:@!$&'()*+,;=-._~")
    return f"{scheme}://{host}:{port}/{path}" if path else f"{scheme}://{host}:{port}"


MAX_FORMAT_DEPTH = 64  # nesting of a --format schema; real ones are a few levels deep


def parse_format(raw: str | None) -> Any:
    """--format: 'json', or a JSON schema object for structured output, nested at most
    MAX_FORMAT_DEPTH deep, every string in it text a store and a server can take."""
    if raw is None:
        return None
    if raw.strip() == "json":
        return "json"
    import json

    try:
        schema = json.loads(raw)
    except ValueError:
        schema = None
    except RecursionError:  # json.loads recurses once per level
        raise UsageError(f"--format: the schema is nested more than {MAX_FORMAT_DEPTH} levels deep") from None
    if not isinstance(schema, dict):
        raise UsageError("--format: use 'json' or a JSON schema object")
    _check_schema(schema)
    return schema


def _check_schema(schema: dict[str, Any]) -> None:
    """Depth and text of every value, walked without recursion."""
    pending: list[tuple[Any, int]] = [(schema, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_FORMAT_DEPTH:
            raise UsageError(f"--format: the schema is nested more than {MAX_FORMAT_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, item in value.items():
                valid_text(key, "--format")
                pending.append((item, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            valid_text(value, "--format")


def default_db_path() -> Path:
    import platformdirs

    return platformdirs.user_cache_path(APP_NAME, appauthor=False) / "cache.db"


def config_file_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file, and whether it was named (SEMCACHE_CONFIG): a named file must
    exist; the default one may be absent."""
    if env.get("SEMCACHE_CONFIG"):
        return Path(valid_text(env["SEMCACHE_CONFIG"], "SEMCACHE_CONFIG")).expanduser(), True
    import platformdirs

    return platformdirs.user_config_path(APP_NAME, appauthor=False) / "config.toml", False


def load_config_file(path: Path, named: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if named or path.exists():  # a directory, a device, or a mistyped name
            what = "is not a file" if path.exists() else "does not exist"
            raise UsageError(f"config file {path}{' (SEMCACHE_CONFIG)' if named else ''} {what}")
        return {}
    if not named:  # the default file: someone else's would choose the cache, the model, the host
        from semcache_cli import ownership

        found = ownership.problem(path)
        if found:
            raise UsageError(f"refusing the config file {path}: {found}, so another user could choose where your "
                             "questions go; make it yours alone, or name another with SEMCACHE_CONFIG")
    import tomllib

    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)  # a file that grows without end is read no further
        if len(raw) > MAX_CONFIG_BYTES:
            raise UsageError(f"config file {path}: larger than {MAX_CONFIG_BYTES // 1_000_000} MB, which no "
                             "config file is")
        data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:  # arrays or tables nested thousands deep
        raise UsageError(f"config file {path}: nested too deeply") from None
    except (OSError, ValueError) as exc:  # ValueError: TOMLDecodeError, or bytes that are not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) else " ".join(str(exc).split()) or "not TOML"
        if isinstance(exc, UnicodeDecodeError):
            reason = "not a text file (not valid UTF-8)"
        raise UsageError(f"config file {path}: {reason}") from None
    known = set(_PARSERS) | {"db", "options"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"config file {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return data


# libpq's connection parameters that hold a secret: those PQconndefaults marks for
# hiding (dispchar "*": password, sslpassword, oauth_client_secret) and the SCRAM keys,
# which log in as well as a password does.
SECRET_PARAMETERS = frozenset({"password", "sslpassword", "oauth_client_secret", "scram_client_key",
                               "scram_server_key"})
MASK = "***"
_PERCENT = re.compile(rb"%([0-9a-fA-F]{2})")


def _percent_decoded(text: str) -> str:
    """%XX decoded as libpq decodes a URL's parts (no `+` for space); a malformed escape
    is left as it is (libpq refuses the URL, but its text is still masked)."""
    raw = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "replace")


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where the secrets of a database URL lie, as (start, end) in its text, found as
    libpq finds them: the password runs from the first `:` of the user part to its `@`,
    and every query parameter whose name, %-decoded and in any case, is one of
    SECRET_PARAMETERS (libpq decodes pass%77ord to password; it rejects PASSWORD, but
    the value is in the URL all the same). Where libpq and a URL parser part ways
    (`a:b@c@host`: libpq stops at the first `@`, urllib at the last; a `?` before the
    `@`), the longer reading is taken, so masking covers both."""
    spans = []
    start = url.find("://") + 3 if "://" in url else 0
    authority = url[start:].split("/", 1)[0]  # libpq looks for the `@` up to the first `/`
    if "@" in authority:
        userinfo = authority[: authority.rindex("@")]
        if ":" in userinfo:
            spans.append((start + userinfo.index(":") + 1, start + len(userinfo)))
    if "?" in url:
        pos = url.index("?") + 1
        for item in url[pos:].split("&"):
            name, eq, _ = item.partition("=")
            if eq and _percent_decoded(name).strip().lower() in SECRET_PARAMETERS:
                spans.append((pos + len(name) + 1, pos + len(item)))
            pos += len(item) + 1
    return [span for span in spans if span[1] > span[0]]


def masked_url(url: str) -> str:
    """A database URL as it may be shown: every secret libpq would read from it (the
    password of user:password@; password, sslpassword and the like among the query
    parameters, however %-encoded or cased) replaced by ***. The one function every
    message, report and error that names a database URL goes through."""
    hidden = bytearray(len(url))
    for start, end in _secret_spans(url):
        hidden[start:end] = b"\x01" * (end - start)
    return "".join(MASK if hidden[i] and (i == 0 or not hidden[i - 1]) else "" if hidden[i] else ch
                   for i, ch in enumerate(url))


def url_secrets(url: str) -> list[str]:
    """The secrets of a database URL as they may appear in someone else's message (a
    driver's error can quote the URL, or a value it decoded): each as written and
    %-decoded, longest first, so scrub() replaces the whole of each."""
    found = [url[start:end] for start, end in _secret_spans(url)]
    found += [_percent_decoded(value) for value in found]
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, urls: list[str]) -> str:
    """`text` with every secret of each URL in `urls` (url_secrets) replaced by ***."""
    for url in urls:
        for secret in url_secrets(url):
            text = text.replace(secret, MASK)
    return text


def is_database_url(location: str) -> bool:
    return "://" in location


# Every database URL this process was given (--db, SEMCACHE_DB, the config file, copy's
# --from and --to): scrub_known() takes their secrets out of text semcache did not write.
_GIVEN_URLS: list[str] = []


def database_setting(value: Any, what: str) -> str:
    """The database setting: a file path (~ expanded) or a URL such as
    postgresql://user@host/db, kept as text: a Path would fold a URL's `//`."""
    text = _text(value, what)
    if is_database_url(text):
        _GIVEN_URLS.append(text)
        return text
    return os.path.expanduser(text)


def scrub_known(text: str) -> str:
    """`text` without the secrets of any database URL this process was given: the last
    guard on every line the command line prints, for text it did not write itself (an
    unexpected exception's, a driver's)."""
    return scrub(text, _GIVEN_URLS) if _GIVEN_URLS else text


@dataclass
class Settings:
    db: str  # a file path, or a URL (database_setting)
    ollama_url: str
    model: str = DEFAULTS["model"]
    embed_model: str = DEFAULTS["embed_model"]
    threshold: float = DEFAULTS["threshold"]
    min_confidence: float = DEFAULTS["min_confidence"]
    ttl: float | None = DEFAULTS["ttl"]
    namespace: str = DEFAULTS["namespace"]
    system: str | None = DEFAULTS["system"]
    timeout: float = DEFAULTS["timeout"]
    max_query_chars: int = DEFAULTS["max_query_chars"]
    guards: tuple[str, ...] = DEFAULTS["guards"]
    margin: float = DEFAULTS["margin"]
    scale: str = DEFAULTS["scale"]
    strict_cache: bool = DEFAULTS["strict_cache"]
    options: dict[str, Any] = field(default_factory=dict)  # every -o option: the request's body
    db_is_default: bool = False  # only the default location is created on demand

    @property
    def scope_options(self) -> dict[str, Any]:
        """The options that are part of the cache scope (RUNTIME_OPTIONS are not)."""
        return scope_options(self.options)

    @property
    def runtime_options(self) -> dict[str, Any]:
        """The options sent to Ollama that are no part of the scope."""
        return {key: value for key, value in self.options.items() if key in RUNTIME_OPTIONS}


def load_settings(
    flags: Mapping[str, Any] | None = None,
    option_pairs: list[tuple[str, str]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting by precedence. `flags` holds only what was given on the
    command line (None = not given); values there are already typed by Typer except
    durations, which arrive as text."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path, named = config_file_path(env)
    file_values = load_config_file(path, named)

    resolved: dict[str, Any] = {}
    for key, parse in _PARSERS.items():
        value = DEFAULTS[key]
        if key in file_values:
            value = parse(file_values[key], f"{path}: {key}")
        if env.get(env_name(key)):
            value = parse(env[env_name(key)], env_name(key))
        if key in flags:
            value = parse(flags[key], f"--{key.replace('_', '-')}")
        resolved[key] = value

    if "db" in flags:
        db = database_setting(flags["db"], "--db")
    elif env.get("SEMCACHE_DB"):
        db = database_setting(env["SEMCACHE_DB"], "SEMCACHE_DB")
    elif "db" in file_values:
        db = database_setting(file_values["db"], f"{path}: db")
    else:
        db = str(default_db_path())
    db_is_default = not ("db" in flags or env.get("SEMCACHE_DB") or "db" in file_values)

    file_options = file_values.get("options", {})
    if not isinstance(file_options, dict):
        raise UsageError(f"{path}: options must be a table, e.g. [options]")
    base = {k: parse_option(k, v, f"{path}: options") for k, v in file_options.items()}
    options = parse_options(option_pairs or [], base)

    return Settings(
        db=db,
        ollama_url=parse_ollama_host(env.get("OLLAMA_HOST")),
        options=options,
        db_is_default=db_is_default,
        **resolved,
    )


def check_setting(key: str, value: Any) -> Any:
    """One setting's value typed and checked, as a config file's would be (ttl: None is never)."""
    return _PARSERS[key]("never" if key == "ttl" and value is None else value, key)


_SECONDS = {"ttl", "timeout"}  # durations a program gives as a number of seconds


def explicit_settings(db: str, ollama_host: str, values: Mapping[str, Any],
                      options: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the values given and the defaults only: no config file, no
    environment (the Python API). Each value is checked as a config file's would be, the
    message naming its key."""
    resolved = dict(DEFAULTS)
    for key, value in values.items():
        if key not in _PARSERS:
            raise UsageError(f"unknown setting {key!r} (known: {', '.join(sorted(_PARSERS))})")
        if key in _SECONDS and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = f"{value!r}s"  # a program's number is seconds, as the API says; a bare one typed is not
        resolved[key] = check_setting(key, value)
    typed = {key: parse_option(key, value, "options") for key, value in (options or {}).items()}
    return Settings(db=database_setting(str(db), "db"), ollama_url=parse_ollama_host(ollama_host),
                    options=typed, **resolved)
