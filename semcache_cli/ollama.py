"""The Ollama HTTP client (httpx): embeddings, streaming chat, and error mapping.

Every httpx error and every Ollama error body is translated here into the exception
tree of errors.py, with a one-line message that says what to do. Timeouts are explicit:
a short connect timeout (an absent server answers fast) and a long read timeout (a cold
model load can take minutes before the first token).
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# httpx imports its optional command-line tool (click, rich and pygments: ~75 ms measured)
# whenever those happen to be installed, and they are here (sqlite-utils needs click).
# semcache never runs that tool; an empty stand-in module makes httpx skip it.
sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))

import httpx  # noqa: E402

from semcache_cli.errors import GenerationFailed, ModelNotFound, OllamaError, OllamaUnreachable  # noqa: E402

CONNECT_TIMEOUT_S = 5.0
BUSY_RETRY_DELAYS_S = (0.5, 1.0, 2.0)


class EmbedInputTooLong(OllamaError):
    """The query is longer than the embedding model's context (sent with truncate=false,
    so a long query is never silently cut and matched on its first part only)."""


@dataclass
class Generation:
    text: str
    done_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_s: float | None


def _error_text(response: httpx.Response) -> tuple[str, bool]:
    """The `error` value of an Ollama error body, and whether the body was JSON."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip(), False
    if isinstance(body, dict) and "error" in body:
        return str(body["error"]), True
    return response.text.strip(), True


class OllamaClient:
    def __init__(self, base_url: str, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._sleep = sleep
        self._legacy_embed = False
        headers = {}
        if os.environ.get("OLLAMA_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OLLAMA_API_KEY']}"
        self._http = httpx.Client(
            base_url=base_url,
            headers=headers,
            # Certificates are loaded only for https: building the default SSL context
            # costs ~85 ms per process, and plain http (the usual loopback) never uses it.
            verify=base_url.startswith("https://"),
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=timeout, write=timeout, pool=CONNECT_TIMEOUT_S),
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    # -- error mapping -----------------------------------------------------------------

    def _unreachable(self, exc: Exception) -> OllamaUnreachable:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return OllamaUnreachable(
                f"Ollama at {self.base_url} timed out after {self.timeout:g} s without replying "
                "(a cold model load can be slow: raise --timeout)"
            )
        return OllamaUnreachable(
            f"cannot reach Ollama at {self.base_url}: is `ollama serve` running there? "
            "(set OLLAMA_HOST if it runs elsewhere)"
        )

    def _status_error(self, response: httpx.Response, model: str) -> OllamaError:
        text, _ = _error_text(response)
        status = response.status_code
        if status == 404 and "not found" in text:
            return ModelNotFound(model, f"model '{model}' not found on Ollama at {self.base_url}: run `ollama pull {model}`")
        if status == 400 and "does not support" in text:
            return OllamaError(f"model '{model}' cannot do this ({text}); choose another model")
        if status == 503:
            return OllamaError(f"Ollama at {self.base_url} is busy ({text}); try again later")
        return OllamaError(f"Ollama at {self.base_url} failed: {text or 'no reason given'} (HTTP {status})")

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST with bounded retries on 503 "server busy" (safe: nothing was done)."""
        for delay in (*BUSY_RETRY_DELAYS_S, None):
            try:
                response = self._http.post(path, json=body)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            if response.status_code != 503 or delay is None:
                return response
            self._sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns

    # -- embeddings --------------------------------------------------------------------

    def embed(self, model: str, texts: list[str]) -> list[array]:
        """One float32 array per text, in order, all of one length (batched through
        /api/embed's list input). array('f') converts and checks a row in C: a batch of
        256 vectors is a megabyte of JSON, and numpy would cost a fresh ask ~90 ms."""
        if not self._legacy_embed:
            response = self._post("/api/embed", {"model": model, "input": texts, "truncate": False})
            text, is_json = _error_text(response) if response.status_code != 200 else ("", True)
            if response.status_code == 404 and not is_json:
                # Servers before v0.2.6 have no /api/embed: plain-text 404 page.
                self._legacy_embed = True
            elif response.status_code == 400 and "context length" in text:
                raise EmbedInputTooLong(f"the query is longer than {model}'s context; semantic layer skipped")
            elif response.status_code != 200:
                raise self._status_error(response, model)
            else:
                vectors = self._json(response).get("embeddings")
                return self._checked_vectors(vectors, len(texts))
        vectors = []
        for text in texts:
            response = self._post("/api/embeddings", {"model": model, "prompt": text})
            if response.status_code != 200:
                raise self._status_error(response, model)
            vectors.append(self._json(response).get("embedding"))
        return self._checked_vectors(vectors, len(texts))

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
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
                with self._http.stream("POST", "/api/chat", json=body) as response:
                    if response.status_code == 503 and delay is not None:
                        response.read()
                        self._sleep(delay)
                        continue
                    if response.status_code != 200:
                        response.read()
                        raise self._status_error(response, model)
                    return self._read_stream(response, on_token)
            except httpx.TimeoutException as exc:
                raise self._unreachable(exc) from None
            except httpx.ConnectError as exc:
                raise self._unreachable(exc) from None
            except httpx.TransportError:
                raise GenerationFailed(
                    f"the connection to Ollama at {self.base_url} dropped mid-answer; nothing was stored"
                ) from None
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _read_stream(self, response: httpx.Response, on_token: Callable[[str], None]) -> Generation:
        parts: list[str] = []
        for line in response.iter_lines():
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
                total = chunk.get("total_duration")
                return Generation(
                    text="".join(parts),
                    done_reason=chunk.get("done_reason"),
                    prompt_tokens=chunk.get("prompt_eval_count"),
                    completion_tokens=chunk.get("eval_count"),
                    total_s=total / 1e9 if isinstance(total, (int, float)) else None,
                )
        raise GenerationFailed("Ollama's answer stream ended before it finished; nothing was stored")
