"""The Ollama HTTP client: embeddings, streaming chat, and error mapping.

Every connection error and every Ollama error body is translated here into the exception
tree of errors.py, with a one-line message that says what to do. Timeouts are explicit:
a short connect timeout (an absent server answers fast) and a long read timeout (a cold
model load can take minutes before the first token).

One kept-alive HTTP/1.1 connection per client (a client belongs to one thread), from
http11.py: semcache makes two kinds of POST, and importing httpx with httpcore cost
every fresh process ~100 ms, http.client ~25 ms.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from semcache_cli import __version__, http11
from semcache_cli.errors import GenerationFailed, ModelNotFound, OllamaError, OllamaUnreachable

CONNECT_TIMEOUT_S = 5.0
BUSY_RETRY_DELAYS_S = (0.5, 1.0, 2.0)


class EmbedInputTooLong(OllamaError):
    """The query is longer than the embedding model's context (sent with truncate=false,
    so a long query is never silently cut and matched on its first part only)."""


class _Dropped(Exception):
    """The connection failed after the request was sent (reset, closed, cut short)."""


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
        """The `error` value of an Ollama error body, and whether the body was JSON."""
        text = self.body.decode("utf-8", "replace").strip()
        try:
            body = json.loads(self.body)
        except ValueError:
            return text, False
        if isinstance(body, dict) and "error" in body:
            return str(body["error"]), True
        return text, True


class OllamaClient:
    def __init__(self, base_url: str, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._sleep = sleep
        self._legacy_embed = False
        url = urlsplit(base_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": f"semcache/{__version__}"}
        if os.environ.get("OLLAMA_API_KEY"):
            self._headers["Authorization"] = f"Bearer {os.environ['OLLAMA_API_KEY']}"
        self._conn: http11.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- transport -----------------------------------------------------------------------

    def _connection(self) -> http11.Connection:
        """The open connection, or a new one: connected within the connect timeout, then
        reading with the (long) read timeout."""
        if self._conn is not None and self._conn.idle():
            return self._conn
        self.close()
        try:
            self._conn = http11.Connection(self._host, self._port, self._https, CONNECT_TIMEOUT_S, self.timeout)
        except OSError:  # refused, unknown host, no route, connect timeout, bad certificate
            raise self._unreachable(timed_out=False) from None
        return self._conn

    def _send(self, path: str, body: dict[str, Any]) -> http11.Response:
        """POST a JSON body; the reply with its status and headers read. A kept-alive
        connection the server closed meanwhile is reopened once: the request never got there."""
        data = json.dumps(body).encode()
        for fresh_only in (False, True):
            reused = self._conn is not None and self._conn.idle()
            conn = self._connection()
            try:
                return conn.post(self._prefix + path, self._headers, data)
            except TimeoutError:
                self.close()
                raise self._unreachable(timed_out=True) from None
            except OSError as exc:
                self.close()
                if reused and not fresh_only and isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                    continue
                raise _Dropped() from None
        raise AssertionError("unreachable")  # the second try returns or raises

    def _read(self, response: http11.Response) -> Reply:
        return Reply(response.status, self._receive(response.read))

    def _receive(self, read: Callable[[], bytes]) -> bytes:
        """Body bytes from the connection; on a failure the connection is closed, so the
        rest of that reply is never read as the next one."""
        try:
            return read()
        except TimeoutError:
            self.close()
            raise self._unreachable(timed_out=True) from None
        except OSError:
            self.close()
            raise _Dropped() from None

    # -- error mapping -----------------------------------------------------------------

    def _unreachable(self, timed_out: bool) -> OllamaUnreachable:
        if timed_out:
            return OllamaUnreachable(
                f"Ollama at {self.base_url} timed out after {self.timeout:g} s without replying "
                "(a cold model load can be slow: raise --timeout)"
            )
        return OllamaUnreachable(
            f"cannot reach Ollama at {self.base_url}: is `ollama serve` running there? "
            "(set OLLAMA_HOST if it runs elsewhere)"
        )

    def _status_error(self, reply: Reply, model: str) -> OllamaError:
        text, _ = reply.error_text()
        status = reply.status
        if status == 404 and "not found" in text:
            return ModelNotFound(model, f"model '{model}' not found on Ollama at {self.base_url}: run `ollama pull {model}`")
        if status == 400 and "does not support" in text:
            return OllamaError(f"model '{model}' cannot do this ({text}); choose another model")
        if status == 503:
            return OllamaError(f"Ollama at {self.base_url} is busy ({text}); try again later")
        return OllamaError(f"Ollama at {self.base_url} failed: {text or 'no reason given'} (HTTP {status})")

    def _post(self, path: str, body: dict[str, Any]) -> Reply:
        """POST with bounded retries on 503 "server busy" (safe: nothing was done)."""
        for delay in (*BUSY_RETRY_DELAYS_S, None):
            try:
                reply = self._read(self._send(path, body))
            except _Dropped:
                raise self._unreachable(timed_out=False) from None
            if reply.status != 503 or delay is None:
                return reply
            self._sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns

    # -- embeddings --------------------------------------------------------------------

    def embed(self, model: str, texts: list[str]) -> list[array]:
        """One float32 array per text, in order, all of one length (batched through
        /api/embed's list input). array('f') converts and checks a row in C: a batch of
        256 vectors is a megabyte of JSON, and numpy would cost a fresh ask ~90 ms."""
        if not self._legacy_embed:
            reply = self._post("/api/embed", {"model": model, "input": texts, "truncate": False})
            text, is_json = reply.error_text() if reply.status != 200 else ("", True)
            if reply.status == 404 and not is_json:
                # Servers before v0.2.6 have no /api/embed: plain-text 404 page.
                self._legacy_embed = True
            elif reply.status == 400 and "context length" in text:
                raise EmbedInputTooLong(f"the query is longer than {model}'s context; semantic layer skipped")
            elif reply.status != 200:
                raise self._status_error(reply, model)
            else:
                return self._checked_vectors(self._json(reply.body).get("embeddings"), len(texts))
        vectors = []
        for text in texts:
            reply = self._post("/api/embeddings", {"model": model, "prompt": text})
            if reply.status != 200:
                raise self._status_error(reply, model)
            vectors.append(self._json(reply.body).get("embedding"))
        return self._checked_vectors(vectors, len(texts))

    def _json(self, data: bytes) -> dict[str, Any]:
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OllamaError(f"Ollama at {self.base_url} sent a reply that is not a JSON object")
        return body

    def _checked_vectors(self, vectors: Any, count: int) -> list[array]:
        malformed = OllamaError(f"Ollama at {self.base_url} sent malformed embeddings")
        if not isinstance(vectors, list) or len(vectors) != count or not all(isinstance(v, list) for v in vectors):
            raise malformed
        try:
            rows = [array("f", row) for row in vectors]
        except (TypeError, ValueError, OverflowError):  # something that is not a number
            raise malformed from None
        lengths = {len(row) for row in rows}
        if len(lengths) > 1 or 0 in lengths:  # ragged or empty rows
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
        for delay in (*BUSY_RETRY_DELAYS_S, None):
            try:
                response = self._send("/api/chat", body)
                if response.status != 200:
                    reply = self._read(response)
                    if reply.status == 503 and delay is not None:
                        self._sleep(delay)
                        continue
                    raise self._status_error(reply, model)
                return self._read_stream(response, on_token)
            except _Dropped:
                raise GenerationFailed(
                    f"the connection to Ollama at {self.base_url} dropped mid-answer; nothing was stored"
                ) from None
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _read_stream(self, response: http11.Response, on_token: Callable[[str], None]) -> Generation:
        """The answer's NDJSON lines up to done:true. The connection is kept for the next
        call only when the whole response was read; any failure closes it."""
        parts: list[str] = []
        try:
            while line := self._receive(response.readline):
                if not line.strip():
                    continue
                try:
                    chunk = json.loads(line)
                except ValueError:
                    raise GenerationFailed("Ollama sent malformed JSON mid-answer; nothing was stored") from None
                if not isinstance(chunk, dict):
                    raise GenerationFailed("Ollama sent malformed JSON mid-answer; nothing was stored")
                if "error" in chunk:
                    raise GenerationFailed(f"Ollama failed mid-answer: {chunk['error']}; nothing was stored")
                message = chunk.get("message") or {}
                piece = message.get("content") or ""
                if piece:
                    parts.append(piece)
                    on_token(piece)
                if chunk.get("done"):
                    self._finish(response)
                    total = chunk.get("total_duration")
                    return Generation(
                        text="".join(parts),
                        done_reason=chunk.get("done_reason"),
                        prompt_tokens=chunk.get("prompt_eval_count"),
                        completion_tokens=chunk.get("eval_count"),
                        total_s=total / 1e9 if isinstance(total, (int, float)) else None,
                    )
            raise _Dropped()  # the body ended without done:true
        except BaseException:
            self.close()  # mid-stream: the rest of this response must never be read as the next one
            raise

    def _finish(self, response: http11.Response) -> None:
        """Read the end of a complete answer's body, so the connection can be reused; an
        answer already complete is never failed by how its connection ends."""
        try:
            response.read()
        except OSError:
            self.close()
