"""An Ollama-compatible HTTP server for tests (and benchmarks), on a loopback port.

It follows ../shared/OLLAMA_API.md: the same endpoints, NDJSON streaming with chunked
transfer and no blank lines, metrics only on the done chunk, the exact error bodies, a
plain-text 404 for unknown routes. The official `ollama` client parses its replies
(tests/test_fake_ollama.py checks that).

Embeddings are deterministic: a bag of hashed word vectors, so texts sharing most of
their words are close and the same text always gets the same vector. In table mode it
serves real precomputed vectors (../shared/data/clinc150.*) for known texts.

Fault switches, set on `server.faults` (see `Faults`), cover what a real Ollama does
when it is down, cold, busy, or dies mid-answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

BUSY_TEXT = "server busy, please try again.  maximum pending requests exceeded"
TASK_PREFIXES = ("search_query: ", "search_document: ", "clustering: ", "classification: ")


def canonical(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def hashed_embedding(text: str, dims: int) -> np.ndarray:
    """Sum of one pseudo-random unit direction per word: shared words => similar."""
    for prefix in TASK_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
    words = re.findall(r"\w+", text.lower()) or [""]
    total = np.zeros(dims)
    for word in words:
        total += _word_direction(word, dims)
    return total / np.linalg.norm(total)


@functools.lru_cache(maxsize=65_536)
def _word_direction(word: str, dims: int) -> np.ndarray:
    """A word's pseudo-random direction, made once: the server answers at once, as the
    benchmarks assume."""
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    direction = np.random.default_rng(seed).standard_normal(dims)
    direction.flags.writeable = False
    return direction


@dataclass
class Faults:
    chat_status: tuple[int, str] | None = None  # error before any output
    embed_status: tuple[int, str] | None = None
    embed_status_after: int = 0  # embed_status only once this many embedding requests were answered
    busy: int = 0  # the next N model requests get 503 server busy
    delay: float = 0.0  # seconds before the first chat chunk (cold load)
    hang: bool = False  # chat never answers
    error_after: int | None = None  # {"error"} line after N chunks
    drop_after: int | None = None  # connection closed after N chunks
    malformed_after: int | None = None  # a line that is not JSON after N chunks
    done_reason: str = "stop"
    chunk_delay: float = 0.0  # seconds between chunks
    legacy: bool = False  # a server before v0.2.6: no /api/embed
    idle_close: bool = False  # close every kept-alive connection after its reply, unannounced
    redirects: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (3xx status, Location)


@dataclass
class FakeOllama:
    chat_models: set[str] = field(default_factory=lambda: {"llama3.2:latest", "qwen2.5:latest"})
    embed_models: dict[str, int] = field(
        default_factory=lambda: {"nomic-embed-text:latest": 768, "all-minilm:latest": 384}
    )
    replies: dict[str, str] = field(default_factory=dict)
    table: dict[str, np.ndarray] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    version: str = "0.12.3"
    embed_context_chars: int = 0  # > 0: longer embedding inputs exceed the model's context (as tokens would)

    def __post_init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) of every request
        self.lock = threading.Lock()
        self.connections = 0  # TCP connections accepted
        self.stopping = threading.Event()
        self.chat_started = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._table_json: dict[str, tuple[np.ndarray, str]] = {}  # encoded once: large replays stay fast

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, port: int = 0, tls: Any = None) -> FakeOllama:
        """Serve on a loopback port; with an ssl.SSLContext as `tls`, over https."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", port), handler)
        self._server.tls = tls
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self._server and self._server.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def generations(self) -> int:
        return self.counts["/api/chat"] + self.counts["/api/generate"]

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.requests.clear()
            self.seen.clear()
            self.connections = 0
            self._table_json.clear()
        self.faults = Faults()
        self.embed_context_chars = 0

    # -- behaviour ---------------------------------------------------------------------

    def embed(self, model: str, text: str) -> np.ndarray:
        dims = self.embed_models[canonical(model)]
        vector = self.table.get(text)
        if vector is not None and vector.size == dims:
            return vector.astype(np.float64)
        return hashed_embedding(text, dims)

    def embed_json(self, model: str, text: str) -> str:
        """The JSON array of an embedding; table vectors are encoded once and kept (until
        the table gives that text another vector)."""
        entry = self.table.get(text)
        cached = self._table_json.get(text)
        if cached is not None and entry is not None and cached[0] is entry:
            return cached[1]
        vector = self.embed(model, text)
        encoded = json.dumps(np.round(vector, 7).tolist())
        if entry is not None and vector.size == entry.size:
            self._table_json[text] = (entry, encoded)
        return encoded

    def reply_to(self, prompt: str) -> str:
        return self.replies.get(prompt, f"This is the answer to: {prompt}")

    def take_busy(self) -> bool:
        with self.lock:
            if self.faults.busy > 0:
                self.faults.busy -= 1
                return True
        return False


class _Server(ThreadingHTTPServer):
    tls: Any = None

    def get_request(self) -> tuple[socket.socket, Any]:
        # Go's net/http (real Ollama) sets TCP_NODELAY; without it Nagle's algorithm and
        # delayed ACKs add ~40 ms to every small keep-alive reply.
        conn, addr = super().get_request()
        with self.RequestHandlerClass.fake.lock:  # type: ignore[attr-defined]
            self.RequestHandlerClass.fake.connections += 1  # type: ignore[attr-defined]
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:  # handshake in the request's own thread: a slow client holds only that one
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(10)
            try:
                request.do_handshake()
            except OSError:  # a client that does not trust the certificate hangs up: normal in the TLS tests
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-reply (a timeout test, a killed process) is normal here."""
        import sys

        if not isinstance(sys.exc_info()[1], OSError):  # reset, broken pipe, a TLS peer gone
            super().handle_error(request, client_address)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOllama
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # -- framing -----------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = self.close_connection or self.fake.faults.idle_close

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _line(self, obj: Any) -> None:
        self._chunk(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = self.close_connection or self.fake.faults.idle_close

    def _drop(self) -> None:
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            self._error(400, "missing request body")
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            self._error(400, f"invalid character '{raw[:1].decode(errors='replace')}' looking for beginning of value")
            return None
        if not isinstance(body, dict):
            self._error(400, "json: cannot unmarshal array into Go value of type api.Request")
            return None
        return body

    # -- routing -----------------------------------------------------------------------

    ROUTES = {
        "/": {"GET", "HEAD"},
        "/api/version": {"GET"},
        "/api/tags": {"GET", "HEAD"},
        "/api/show": {"POST"},
        "/api/embed": {"POST"},
        "/api/embeddings": {"POST"},
        "/api/chat": {"POST"},
        "/api/generate": {"POST"},
    }

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        fake = self.fake
        path = self.path.split("?", 1)[0]
        with fake.lock:
            fake.seen.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        if path in fake.faults.redirects:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, location = fake.faults.redirects[path]
            body = f"<a href='{location}'>moved</a>".encode()
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/api/embed" and fake.faults.legacy:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with fake.lock:
                fake.counts[path] += 1
            return self._text(404, "404 page not found")
        if path not in self.ROUTES or self.command not in self.ROUTES[path]:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # as Go does: the connection stays usable
            if path not in self.ROUTES:
                return self._text(404, "404 page not found")
            return self._text(405, "405 method not allowed")
        body: dict[str, Any] = {}
        if self.command == "POST":
            parsed = self._body()
            if parsed is None:
                return
            body = parsed
        with fake.lock:
            fake.counts[path] += 1
            fake.requests.append((path, body))
        if path == "/":
            return self._text(200, "Ollama is running")
        if path == "/api/version":
            return self._json(200, {"version": fake.version})
        if path == "/api/tags":
            return self._json(200, {"models": [self._model_info(m) for m in sorted(fake.chat_models | set(fake.embed_models))]})
        if path == "/api/show":
            return self._show(body)
        if path in ("/api/embed", "/api/embeddings"):
            return self._embed(path, body)
        return self._generate(path, body)

    def _model_info(self, name: str) -> dict[str, Any]:
        embedding = name in self.fake.embed_models
        family = "nomic-bert" if embedding else "llama"
        return {
            "name": name, "model": name, "modified_at": "2025-10-26T17:21:21.196249Z",
            "size": 274302450, "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "137M" if embedding else "3.2B", "quantization_level": "F16"},
        }

    def _show(self, body: dict[str, Any]) -> None:
        name = canonical(str(body.get("model") or body.get("name") or ""))
        fake = self.fake
        if name in fake.embed_models:
            info = {"general.architecture": "nomic-bert", "nomic-bert.embedding_length": fake.embed_models[name]}
            caps = ["embedding"]
        elif name in fake.chat_models:
            info, caps = {"general.architecture": "llama"}, ["completion"]
        else:
            return self._error(404, f"model '{body.get('model') or body.get('name')}' not found")
        self._json(200, {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                         "details": self._model_info(name)["details"], "model_info": info,
                         "capabilities": caps, "modified_at": "2025-10-26T17:21:21.196249Z"})

    # -- embeddings --------------------------------------------------------------------

    def _embed(self, path: str, body: dict[str, Any]) -> None:
        fake = self.fake
        model = str(body.get("model", ""))
        if fake.take_busy():
            return self._error(503, BUSY_TEXT)
        if fake.faults.embed_status and fake.counts[path] > fake.faults.embed_status_after:
            return self._error(*fake.faults.embed_status)
        if canonical(model) not in fake.embed_models:
            return self._error(404, f'model "{model}" not found, try pulling it first')
        if path == "/api/embeddings":
            prompt = body.get("prompt", "")
            if not prompt:
                return self._json(200, {"embedding": []})
            # The legacy endpoint returns raw runner output, not unit length.
            return self._json(200, {"embedding": (fake.embed(model, prompt) * 3.5).tolist()})
        texts = body.get("input", [])
        if isinstance(texts, str):
            texts = [texts] if texts else []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self._error(400, "invalid input type")
        if not texts:
            return self._json(200, {"model": model, "embeddings": []})
        limit = fake.embed_context_chars
        if limit and any(len(t) > limit for t in texts):
            if body.get("truncate") is False:  # Ollama's own words (about 0.14 on)
                return self._error(400, "the input length exceeds the context length")
            texts = [t[:limit] for t in texts]  # truncate defaults to true: the head of the text only
        encoded = []
        dims = body.get("dimensions")
        for text in texts:
            if isinstance(dims, int) and 0 < dims < fake.embed_models[canonical(model)]:
                vector = fake.embed(model, text)[:dims]
                encoded.append(json.dumps(np.round(vector / np.linalg.norm(vector), 7).tolist()))
            else:
                encoded.append(fake.embed_json(model, text))
        tokens = sum(len(t.split()) for t in texts)
        head = json.dumps({"model": model, "total_duration": 14143917, "load_duration": 1019500,
                           "prompt_eval_count": tokens})
        body_text = head[:-1] + ', "embeddings": [' + ", ".join(encoded) + "]}"
        self._send(200, body_text.encode(), "application/json; charset=utf-8")

    # -- generation --------------------------------------------------------------------

    def _generate(self, path: str, body: dict[str, Any]) -> None:
        fake, faults = self.fake, self.fake.faults
        model = str(body.get("model", ""))
        is_chat = path == "/api/chat"
        if fake.take_busy():
            return self._error(503, BUSY_TEXT)
        if faults.chat_status:
            return self._error(*faults.chat_status)
        if canonical(model) in fake.embed_models:
            return self._error(400, f'"{model}" does not support {"chat" if is_chat else "generate"}')
        if canonical(model) not in fake.chat_models:
            return self._error(404, f"model '{model}' not found")
        if is_chat:
            messages = body.get("messages") or []
            prompt = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        else:
            prompt = str(body.get("prompt", ""))
            prompt_tokens = len(prompt.split())
        fake.chat_started.set()
        if faults.hang:
            fake.stopping.wait(60)
            return self._drop()
        if faults.delay:
            time.sleep(faults.delay)
        words = re.findall(r"\S+\s*", fake.reply_to(prompt))
        final = {"done": True, "done_reason": faults.done_reason, "total_duration": 4935886791,
                 "load_duration": 534986708, "prompt_eval_count": prompt_tokens,
                 "prompt_eval_duration": 107345000, "eval_count": len(words), "eval_duration": 4289432000}

        def piece(text: str, done: bool = False) -> dict[str, Any]:
            chunk: dict[str, Any] = {"model": model, "created_at": _now()}
            if is_chat:
                chunk["message"] = {"role": "assistant", "content": text}
            else:
                chunk["response"] = text
            chunk["done"] = done
            return chunk

        if body.get("stream") is False:
            return self._json(200, {**piece("".join(words)), **final})
        self._start_stream()
        for index, word in enumerate(words):
            if index == faults.error_after:
                self._line({"error": "an error was encountered while running the model: unexpected EOF"})
                return self._end_stream()
            if index == faults.drop_after:
                return self._drop()
            if index == faults.malformed_after:
                self._chunk(b'{"model": "broken\n')
                return self._end_stream()
            self._line(piece(word))
            if faults.chunk_delay:
                time.sleep(faults.chunk_delay)
        self._line({**piece(""), **final})
        self._end_stream()


def load_clinc_table(data_dir: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """CLINC150 rows and a text -> real all-MiniLM vector table (first row wins)."""
    with open(f"{data_dir}/clinc150.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    matrix = np.load(f"{data_dir}/clinc150.minilm.f16.npy")
    table: dict[str, np.ndarray] = {}
    for row, vector in zip(rows, matrix, strict=True):
        table.setdefault(row["text"], vector.astype(np.float32))
    return rows, table


if __name__ == "__main__":  # a standalone server for manual runs and benchmarks
    import argparse

    parser = argparse.ArgumentParser(description="Ollama-compatible test server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--clinc", metavar="DATA_DIR", help="table mode: serve the CLINC150 vectors of DATA_DIR")
    args = parser.parse_args()
    server = FakeOllama()
    if args.clinc:
        server.table.update(load_clinc_table(args.clinc)[1])
        for text in server.table:  # encode once up front: replay benchmarks time semcache, not this
            server.embed_json("all-minilm", text)
    server.start(args.port)
    print(server.url, flush=True)
    try:
        server.stopping.wait()
    except KeyboardInterrupt:
        server.stop()
