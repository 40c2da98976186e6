"""The Ollama HTTP client: embeddings, streaming chat, and error mapping.

Every connection error and every Ollama error body is translated here into the exception
tree of errors.py, with a one-line message that says what to do. Only a failure to connect
or a timeout is "unreachable" (exit 4); a reply that arrives but cannot be used is an
OllamaError (for embeddings: the engine warns and skips the semantic layer) or, for an
answer, GenerationFailed (nothing is stored).

Every reply is hostile until checked: each field is checked for type and range before
use, every wait has a deadline and every buffer a bound (the limits below;
docs/limits.md). Deadlines are wall-clock, not per read: connecting within
CONNECT_TIMEOUT_S; the reply's head, and for embeddings its whole body, within `timeout`;
an answer's first token within `timeout` (a cold model load is slow), then each next one
within min(timeout, IDLE_LIMIT_S), with no cap on a long answer that keeps streaming.

Redirects, proxy choice and the kept-alive connection are http11.Client's (why a client
of our own: docs/performance.md); this module is Ollama's API on top of it, the API key
given to the client for OLLAMA_HOST's origin only.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from semcache_cli import __version__, http11
from semcache_cli.errors import (  # EmbedInputTooLong: raised here, and importable from here as before
    EmbedInputTooLong,
    GenerationFailed,
    ModelNotFound,
    OllamaError,
    OllamaUnreachable,
    UsageError,
)

CONNECT_TIMEOUT_S = 5.0
IDLE_LIMIT_S = 120.0  # the most silence between two tokens of an answer that has started
BODY_GRACE_S = http11.GRACE_S  # for the rest of a body once what matters is known: the end after done:true, an error's text
BUSY_RETRY_DELAYS_S = (0.5, 1.0, 2.0)
MAX_LINE_BYTES = 1 << 20  # one NDJSON line of an answer: a real one is ~200 bytes
MAX_ANSWER_CHARS = 4_000_000  # a whole answer; a 256k-token context is ~1 MB of text
EMBED_REPLY_BASE_BYTES = 65_536
EMBED_REPLY_PER_TEXT_BYTES = 131_072  # a 4096-dim vector as JSON is ~60 KB, 1024 dims ~20 KB
MAX_ERROR_BODY_BYTES = 65_536  # of an error or redirect reply: read for its message only
MAX_SERVER_TEXT = 200  # characters of server text in one of our messages
MAX_COUNT = 1_000_000_000  # a token count above this is not a real one
MAX_DURATION_NS = 7 * 86_400 * 10**9  # nor a generation time above a week

_DONE_REASON = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class _Unusable(Exception):
    """A reply arrived but cannot be used (broken framing, a bound passed, a malformed
    field, a connection dropped mid-reply); the reason completes "Ollama at X ..."."""


@dataclass
class Generation:
    text: str
    done_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_s: float | None


class Reply(NamedTuple):
    status: int
    body: bytes

    def error_text(self) -> tuple[str, bool]:
        """The `error` value of an Ollama error body made one short line, and whether the
        body was JSON."""
        try:
            body = _decode_json(self.body)
        except ValueError:
            return one_line(self.body.decode("utf-8", "replace")), False
        if isinstance(body, dict) and "error" in body:
            error = body["error"]
            return one_line(error if isinstance(error, str) else json.dumps(error)), True
        return one_line(self.body.decode("utf-8", "replace")), True


def one_line(text: str, limit: int = MAX_SERVER_TEXT) -> str:
    """Server text fit for one line of ours: tags of an HTML page dropped, whitespace runs
    (newlines too) made one space, other control and invisible characters (escape
    sequences, bidi overrides, lone surrogates) removed, at most `limit` characters."""
    if text.lstrip().startswith("<"):
        text = re.sub(r"<[^>]*>", " ", text)
    kept = "".join(" " if ch.isspace() else ch for ch in text if ch.isprintable() or ch.isspace())
    kept = " ".join(kept.split())
    return kept if len(kept) <= limit else kept[:limit - 1].rstrip() + "…"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; Ollama never sends them


_JSON = json.JSONDecoder(parse_constant=_no_constant)


def _decode_json(data: bytes) -> Any:
    """Strict JSON from UTF-8 bytes; ValueError for anything else, nesting too deep included."""
    try:
        return _JSON.decode(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None  # type(): bool is an int too


def _seconds(nanoseconds: Any) -> float | None:
    if type(nanoseconds) not in (int, float) or not 0 <= nanoseconds <= MAX_DURATION_NS:  # NaN fails too
        return None
    return float(nanoseconds) / 1e9


def _valid_text(text: str) -> bool:
    """Encodable as UTF-8: JSON can spell a lone surrogate ("\\ud800"), which no terminal
    or database takes; such an answer is refused, never stored repaired."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _api_key() -> str | None:
    """OLLAMA_API_KEY, refused when it could forge or split request headers."""
    key = os.environ.get("OLLAMA_API_KEY")
    if not key:
        return None
    for position, ch in enumerate(key, 1):
        if not "!" <= ch <= "~":
            kind = "a control character" if not ch.isprintable() else "a space" if ch.isspace() else "a non-ASCII character"
            raise UsageError(f"OLLAMA_API_KEY: character {position} is {kind}; an API key is printable ASCII "
                             "without spaces (check how it was exported)")
    return key


class OllamaClient:
    def __init__(self, base_url: str, timeout: float, sleep: Callable[[float], None] = time.sleep,
                 transport: http11.Transport | None = None) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._sleep = sleep
        self._legacy_embed = False
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"semcache/{__version__}"}
        key = _api_key()
        try:  # a proxy setting that cannot be used is a usage error before any request
            self._http = http11.Client(base_url, headers, {"Authorization": f"Bearer {key}"} if key else {},
                                       os.environ, CONNECT_TIMEOUT_S, transport)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def close(self) -> None:
        self._http.close()

    # -- transport -----------------------------------------------------------------------

    def _where(self, origin: http11.Origin | None = None) -> str:
        origin = origin or self._http.home
        proxy = self._http.proxy(origin)
        name = self.base_url if origin == self._http.home else origin.url()
        return f"{name} (through the proxy {proxy.label})" if proxy else name

    def _exchange(self, path: str, body: bytes, deadline: float) -> http11.Response:
        """POST to the API (redirects followed), every failure one of ours."""
        try:
            return self._http.request("POST", path, body, deadline)
        except http11.ConnectFailed as exc:
            raise self._unreachable(exc) from None
        except TimeoutError:
            raise self._timed_out() from None
        except http11.RedirectFailed as exc:
            hint = "; set OLLAMA_HOST to the final URL" if str(exc).startswith("redirected more") else ""
            raise _Unusable(f"{exc}{hint}") from None
        except OSError as exc:
            raise _Unusable(self._broken(exc)) from None

    def _unreachable(self, exc: http11.ConnectFailed) -> OllamaUnreachable:
        origin, proxy, cause = exc.origin, exc.proxy, exc.cause
        if isinstance(cause, http11.TLSFailure):
            return OllamaUnreachable(f"cannot reach Ollama at {self._where(origin)}: {cause}; if its certificate "
                                     "comes from a private CA, point SSL_CERT_FILE at that CA's certificate")
        if isinstance(cause, http11.ProxyRefused):
            hint = "check the credentials in the proxy URL" if cause.status == 407 else "or name the host in NO_PROXY"
            return OllamaUnreachable(f"cannot reach Ollama at {origin.url()}: the proxy {proxy.label if proxy else ''} "
                                     f"answered {one_line(str(cause), 80)} ({hint})")
        if isinstance(cause, TimeoutError):
            seconds = min(CONNECT_TIMEOUT_S, self.timeout)
            return OllamaUnreachable(f"cannot reach Ollama at {self._where(origin)}: no connection within "
                                     f"{seconds:g} s (set OLLAMA_HOST if it runs elsewhere)")
        if isinstance(cause, http11.NoReply):
            return OllamaUnreachable(f"cannot reach Ollama at {self._where(origin)}: the connection closed "
                                     "before any reply (is `ollama serve` running there?)")
        if proxy:  # refused, unknown host, no route, the proxy closed or broke
            return OllamaUnreachable(f"cannot reach Ollama at {origin.url()} through the proxy {proxy.label}: "
                                     "is the proxy running, and can it reach Ollama?")
        return OllamaUnreachable(f"cannot reach Ollama at {self._where(origin)}: is `ollama serve` running "
                                 "there? (set OLLAMA_HOST if it runs elsewhere)")

    def _read_reply(self, response: http11.Response, limit: int) -> Reply:
        """A whole reply; an error reply's body only as far as its message needs, and
        only while it comes promptly: the status alone is reported otherwise."""
        try:
            if response.status == 200:
                body = response.read(limit)
            else:
                response.deadline = min(response.deadline, time.monotonic() + BODY_GRACE_S)
                try:
                    body = response.read(MAX_ERROR_BODY_BYTES, truncate=True)
                except TimeoutError:
                    self.close()
                    return Reply(response.status, b"")
        except TimeoutError:
            self.close()
            raise self._timed_out() from None
        except OSError as exc:
            self.close()
            raise _Unusable(self._broken(exc)) from None
        self._http.keep_or_close()
        return Reply(response.status, body)

    def _post(self, path: str, body: dict[str, Any], limit: int) -> Reply:
        """POST with bounded retries on 503 "server busy" (safe: nothing was done); each
        try has its own deadline for the whole reply."""
        data = json.dumps(body).encode()
        for delay in (*BUSY_RETRY_DELAYS_S, None):
            deadline = time.monotonic() + self.timeout
            reply = self._read_reply(self._exchange(path, data, deadline), limit)
            if reply.status != 503 or delay is None:
                return reply
            self._sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns

    # -- error mapping -----------------------------------------------------------------

    @staticmethod
    def _broken(exc: OSError) -> str:
        if isinstance(exc, http11.TooLarge):
            return f"sent a reply past semcache's limits ({exc})"
        if isinstance(exc, http11.Broken) and not isinstance(exc, http11.Truncated):
            return f"sent a reply that is not valid HTTP ({exc})"
        return "dropped the connection mid-reply"

    def _timed_out(self) -> OllamaUnreachable:
        return OllamaUnreachable(
            f"Ollama at {self._where()} timed out after {self.timeout:g} s without replying "
            "(a cold model load can be slow: raise the timeout)", setting="timeout"
        )

    def _status_error(self, reply: Reply, model: str, path: str) -> OllamaError:
        text, is_json = reply.error_text()
        status = reply.status
        if status == 404 and not is_json:
            # Ollama's own 404s are JSON; a plain page means nothing there speaks its API.
            return OllamaUnreachable(
                f"no Ollama API at {self._where()}: {path} answered HTTP 404 ({text or 'no reason given'}); "
                "check the host, port and path in OLLAMA_HOST")
        if status == 407:  # from a proxy forwarding plain http; CONNECT's 407 is reported on connecting
            return OllamaUnreachable(f"cannot reach Ollama at {self._where()}: the proxy answered HTTP 407 "
                                     "(check the credentials in the proxy URL)")
        if status == 404 and "not found" in text:
            return ModelNotFound(model, f"model '{model}' not found on Ollama at {self.base_url}: run `ollama pull {model}`")
        if status == 400 and "does not support" in text:
            return OllamaError(f"model '{model}' cannot do this ({text}); choose another model")
        if status == 503:
            return OllamaError(f"Ollama at {self._where()} is busy ({text}); try again later")
        if status in (401, 403):
            return OllamaError(f"Ollama at {self._where()} refused the request: {text or 'no reason given'} "
                               f"(HTTP {status}); check OLLAMA_API_KEY")
        return OllamaError(f"Ollama at {self._where()} failed: {text or 'no reason given'} (HTTP {status})")

    # -- embeddings --------------------------------------------------------------------

    def embed(self, model: str, texts: list[str]) -> list[array | None]:
        """One float32 array per text, in order, all of one length (batched through
        /api/embed's list input); None for a text whose vector is unusable (all zeros, or
        not finite), so one bad row does not cost a batch its other vectors. A reply
        that is malformed as a whole raises. array('f') converts and checks a row in C:
        a batch of 256 vectors is a megabyte of JSON, and numpy would cost ~90 ms."""
        try:
            return self._embed(model, texts)
        except _Unusable as exc:
            raise OllamaError(f"Ollama at {self._where()} {exc}") from None

    def _embed(self, model: str, texts: list[str]) -> list[array | None]:
        limit = EMBED_REPLY_BASE_BYTES + EMBED_REPLY_PER_TEXT_BYTES * max(1, len(texts))
        if not self._legacy_embed:
            reply = self._post("/api/embed", {"model": model, "input": texts, "truncate": False}, limit)
            text, is_json = reply.error_text() if reply.status != 200 else ("", True)
            if reply.status == 404 and not is_json:
                # Servers before v0.2.6 have no /api/embed: plain-text 404 page.
                self._legacy_embed = True
            elif reply.status == 400 and "context length" in text:
                raise EmbedInputTooLong(f"the query is longer than {model}'s context; semantic layer skipped")
            elif reply.status != 200:
                raise self._status_error(reply, model, "/api/embed")
            else:
                return self._checked_vectors(self._object(reply.body).get("embeddings"), len(texts))
        vectors = []
        for text in texts:
            reply = self._post("/api/embeddings", {"model": model, "prompt": text},
                               EMBED_REPLY_BASE_BYTES + EMBED_REPLY_PER_TEXT_BYTES)
            if reply.status != 200:
                raise self._status_error(reply, model, "/api/embeddings")
            vectors.append(self._object(reply.body).get("embedding"))
        return self._checked_vectors(vectors, len(texts))

    @staticmethod
    def _object(data: bytes) -> dict[str, Any]:
        try:
            body = _decode_json(data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _Unusable("sent a reply that is not a JSON object")
        return body

    @staticmethod
    def _checked_vectors(vectors: Any, count: int) -> list[array | None]:
        malformed = _Unusable("sent malformed embeddings")
        if not isinstance(vectors, list) or len(vectors) != count or not all(type(v) is list for v in vectors):
            raise malformed
        rows: list[array | None] = []
        for row in vectors:
            if not set(map(type, row)) <= {float, int}:  # array('f') would take True as 1.0
                raise malformed
            try:
                values = array("f", row)
                finite = math.isfinite(math.fsum(values))  # float32 overflow became inf
            except (TypeError, ValueError, OverflowError):
                raise malformed from None
            if not values:
                raise malformed
            # all zeros or not finite: no direction to compare, that text only goes without
            rows.append(values if finite and values.count(0.0) != len(values) else None)
        if len({len(row) for row in rows if row is not None}) > 1:  # ragged rows
            raise malformed
        return rows

    # -- chat --------------------------------------------------------------------------

    def chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        options: dict[str, Any],
        format: Any = None,
        on_token: Callable[[str], None] = lambda _: None,
    ) -> Generation:
        """Stream /api/chat, handing each piece of text to on_token as it arrives.
        Returns only for a stream that ended with done:true; anything else raises."""
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, "think": False}
        if options:
            body["options"] = options
        if format is not None:
            body["format"] = format
        data = json.dumps(body).encode()
        try:
            for delay in (*BUSY_RETRY_DELAYS_S, None):
                deadline = time.monotonic() + self.timeout  # the head and the first token
                response = self._exchange("/api/chat", data, deadline)
                if response.status != 200:
                    reply = self._read_reply(response, MAX_ERROR_BODY_BYTES)
                    if reply.status == 503 and delay is not None:
                        self._sleep(delay)
                        continue
                    raise self._status_error(reply, model, "/api/chat")
                return self._read_stream(response, on_token)
        except _Unusable as exc:
            raise GenerationFailed(f"Ollama at {self._where()} {exc}; nothing was stored") from None
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _read_stream(self, response: http11.Response, on_token: Callable[[str], None]) -> Generation:
        """The answer's NDJSON lines up to done:true, each checked whole before its text is
        handed on. The connection is kept for the next call only when the whole response
        was read; any failure closes it."""
        parts: list[str] = []
        size = 0
        idle = min(self.timeout, IDLE_LIMIT_S)
        try:
            while line := self._stream_line(response, started=bool(parts), idle=idle):
                if not line.strip():
                    continue
                try:
                    chunk = _decode_json(line)
                except ValueError:
                    raise _Unusable("sent malformed JSON mid-answer") from None
                if not isinstance(chunk, dict):
                    raise _Unusable("sent malformed JSON mid-answer")
                if "error" in chunk:
                    error = chunk["error"]
                    text = one_line(error if isinstance(error, str) else json.dumps(error))
                    raise GenerationFailed(f"Ollama failed mid-answer: {text}; nothing was stored")
                piece, done = self._chunk(chunk)
                generation = self._final(chunk, parts, piece) if done else None
                if piece:
                    size += len(piece)
                    if size > MAX_ANSWER_CHARS:
                        raise _Unusable(f"sent an answer longer than {MAX_ANSWER_CHARS:,} characters")
                    parts.append(piece)
                    on_token(piece)
                    response.deadline = time.monotonic() + idle
                if generation is not None:
                    self._finish(response, idle)
                    return generation
            raise _Unusable("ended the answer without done:true")
        except BaseException:
            self.close()  # mid-stream: the rest of this response must never be read as the next one
            raise

    def _stream_line(self, response: http11.Response, started: bool, idle: float) -> bytes:
        try:
            return response.readline(MAX_LINE_BYTES)
        except TimeoutError:
            if not started:
                raise self._timed_out() from None
            raise OllamaUnreachable(f"Ollama at {self._where()} timed out mid-answer: no new text for {idle:g} s; "
                                    "nothing was stored") from None
        except OSError as exc:
            if isinstance(exc, http11.TooLarge):
                raise _Unusable(f"sent a line longer than {MAX_LINE_BYTES:,} bytes mid-answer") from None
            broken = isinstance(exc, http11.Broken) and not isinstance(exc, http11.Truncated)
            raise _Unusable(self._broken(exc) + " mid-answer" if broken else "dropped mid-answer") from None

    @staticmethod
    def _chunk(chunk: dict[str, Any]) -> tuple[str, bool]:
        """A chunk's text and whether it is the last: only JSON true ends an answer."""
        done = chunk.get("done", False)
        if type(done) is not bool:
            raise _Unusable(f"sent a malformed chunk (done is {type(done).__name__}, not true or false)")
        if "message" not in chunk:
            return "", done
        message = chunk["message"]
        if not isinstance(message, dict):
            raise _Unusable("sent a malformed chunk (message is not an object)")
        content = message.get("content", "")
        if not isinstance(content, str):
            raise _Unusable("sent a malformed chunk (message.content is not a string)")
        if not _valid_text(content):
            raise _Unusable("sent text that is not valid Unicode (a lone surrogate)")
        return content, done

    @staticmethod
    def _final(chunk: dict[str, Any], parts: list[str], piece: str) -> Generation:
        """The Generation of the done chunk: metrics are optional and an invalid one is
        dropped (None); done_reason decides whether the answer is stored, so a malformed
        one fails the answer."""
        reason = chunk.get("done_reason")
        if reason == "":
            reason = None
        if reason is not None and not (isinstance(reason, str) and _DONE_REASON.fullmatch(reason)):
            raise _Unusable("sent a malformed done_reason")
        return Generation(
            text="".join(parts) + piece,
            done_reason=reason,
            prompt_tokens=_count(chunk.get("prompt_eval_count")),
            completion_tokens=_count(chunk.get("eval_count")),
            total_s=_seconds(chunk.get("total_duration")),
        )

    def _finish(self, response: http11.Response, idle: float) -> None:
        """Read the end of a complete answer's body, so the connection can be reused; an
        answer already complete is never failed, nor held up, by how its connection ends."""
        response.deadline = time.monotonic() + min(idle, BODY_GRACE_S)
        try:
            response.read(MAX_LINE_BYTES)
        except OSError:
            self.close()
