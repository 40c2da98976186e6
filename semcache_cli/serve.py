"""`semcache serve`: an HTTP server that speaks Ollama's API in front of the real Ollama,
answering from the cache where that is safe (serve_ollama.py decides), passing every
other request through untouched.

The standard library's threading HTTP server, chosen by measurement (bench/serve_stack.py:
as many replies a second as uvicorn with Starlette, and the cache's lookups are blocking
calls that an async server would hand to threads anyway): a thread per connection, each
with its own store connection (api.Cache) and its own kept-alive connection upstream.
Bounded: connections (beyond the limit a 503 in Ollama's error shape), request heads
(the standard library's 64 KiB line and 100 fields), bodies (--max-body), the wait for
a request (--idle), the wait for Ollama (--timeout). SIGTERM or SIGINT stops accepting,
lets the requests in flight finish (a relay still streaming finishes and stores its
answer), closes idle connections, and exits 0.
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from semcache_cli import config, serve_ollama, serve_openai
from semcache_cli.api import Cache
from semcache_cli.engine import AskRequest, Engine, Outcome
from semcache_cli.errors import OllamaError, OllamaUnreachable, SemcacheError, StoreError, UsageError
from semcache_cli.serve_ollama import PASS, SEMANTIC, ClientGone, Relay, Upstream
from semcache_cli.storage.models import LogRow

if TYPE_CHECKING:
    from semcache_cli.storage.port import Store

CACHED_PATHS = ("/api/generate", "/api/chat")
OPENAI_PATHS = (serve_openai.CHAT_PATH, serve_openai.COMPLETIONS_PATH)
EMBED_PATHS = ("/api/embed", "/api/embeddings", "/v1/embeddings")
STATS_PATH = "/semcache/stats"
PASS_PIECE_BYTES = 65_536
EMBED_CACHE_BYTES = 64 << 20  # embedding replies kept in memory, least recently used out first
EMBED_CACHE_ENTRY_BYTES = 4 << 20  # a larger reply is relayed, not kept


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 11435
    token: str | None = None  # SEMCACHE_SERVE_TOKEN: every request must bring it as a bearer token
    max_body: int = 32 << 20
    max_connections: int = 64
    idle_s: float = 30.0  # the longest wait for (the rest of) a request on a connection
    log: Callable[[str], None] | None = None  # the access log: one line per request; None: silent
    log_prompts: bool = False
    warn: Callable[[str], None] = lambda _: None
    ready: Callable[[str], None] = lambda _: None  # called with the address once listening


@dataclass
class Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_kind: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def count(self, kind: str) -> None:
        with self.lock:
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


class EmbedCache:
    """Embedding replies by their exact request body: the same input always gets the same
    vectors from the same model."""

    def __init__(self, limit: int = EMBED_CACHE_BYTES) -> None:
        self._items: OrderedDict[tuple[str, bytes], tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: tuple[str, bytes]) -> tuple[str, bytes] | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, bytes], content_type: str, data: bytes) -> None:
        if len(data) > EMBED_CACHE_ENTRY_BYTES:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._items[key] = (content_type, data)
            self._bytes += len(data)
            while self._bytes > self._limit:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= len(dropped)


class HitRecorder:
    """Hits are counted and logged in batches, by one thread with a connection of its
    own: a commit per hit cost an exact hit through serve about half of its time
    (bench/serve.py). A hit is recorded within FLUSH_S; the queue is bounded, and a
    request thread that finds it full records its hit itself."""

    FLUSH_S = 0.05
    BATCH = 512
    LIMIT = 10_000

    def __init__(self, cache: Cache, warn: Callable[[str], None]) -> None:
        self._cache = cache
        self._warn = warn
        self._queue: deque[tuple[int, float, LogRow]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="semcache-serve-hits", daemon=True)
        self._thread.start()

    def offer(self, hit: tuple[int, float, LogRow]) -> bool:
        """Queue a hit; False when the queue is full (the caller records it)."""
        with self._wake:
            if len(self._queue) >= self.LIMIT or self._stopping:
                return False
            self._queue.append(hit)
            return True

    def _run(self) -> None:
        store = None
        while True:
            with self._wake:
                if not self._queue and not self._stopping:
                    self._wake.wait(self.FLUSH_S)
                batch = [self._queue.popleft() for _ in range(min(self.BATCH, len(self._queue)))]
                done = self._stopping and not self._queue
            if batch:
                try:
                    store = store or self._cache.engine().store
                    store.record_hits(batch)
                except SemcacheError as exc:
                    self._warn(f"{len(batch)} hits could not be recorded ({exc}); their answers were served")
            if done:
                self._cache.release_thread()
                return

    def stop(self) -> None:
        """Record what is queued, then end."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(30)


class _DeferredHits:
    """A thread's store, its hits handed to the HitRecorder."""

    def __init__(self, store: Store, recorder: HitRecorder) -> None:
        self._store = store
        self._recorder = recorder

    def record_hit(self, entry_id: int, now: float, request: LogRow) -> None:
        if not self._recorder.offer((entry_id, now, request)):
            self._store.record_hit(entry_id, now, request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # past the drain deadline, a stuck connection does not hold the exit
    request_queue_size = 128

    def __init__(self, cache: Cache, options: ServeOptions) -> None:
        self.cache = cache
        self.settings = cache.settings
        self.options = options
        self.counters = Counters()
        self.embeds = EmbedCache()
        self.slots = threading.BoundedSemaphore(options.max_connections)
        self.draining = threading.Event()
        self.lock = threading.Lock()
        self.idle: set[socket.socket] = set()  # connections waiting for their next request
        self.active = 0  # connections open
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        self.address_family = family
        super().__init__((options.host, options.port), Handler)
        self.hits = HitRecorder(cache, options.warn)  # once listening: a port in use leaves no thread behind

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # Small replies must not wait for the client's delayed ACK (Nagle): ~40 ms each.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.draining.is_set() or not self.slots.acquire(blocking=False):
            body = serve_ollama.error_body("semcache serve is busy (too many connections); try again")
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self.lock:
            self.active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.idle.discard(request)
            self.cache.release_thread()
            self._done()

    def _done(self) -> None:
        with self.lock:
            self.active -= 1
        self.slots.release()

    def drain(self, deadline_s: float) -> bool:
        """Stop taking requests, close idle connections, wait for those in flight."""
        self.draining.set()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with self.lock:
                for sock in self.idle:
                    try:
                        sock.shutdown(socket.SHUT_RD)  # its handler sees the end and leaves
                    except OSError:
                        pass
                if self.active == 0:
                    return True
            time.sleep(0.01)
        return False

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client that hung up: normal
            return
        self.options.warn(f"unexpected {type(exc).__name__} serving a request: {exc}")


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "semcache"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.options.idle_s)
        self.upstream: Upstream | None = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()

    def handle_one_request(self) -> None:
        with self.server.lock:
            self.server.idle.add(self.connection)
        if self.server.draining.is_set():
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        with self.server.lock:
            self.server.idle.discard(self.connection)
        self.started = time.perf_counter()
        self.kind = "-"
        self.status = 0
        self.shape = serve_ollama.OLLAMA
        self.query = ""
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the access log is ours (log_request's format would show the request line)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A request the standard library could not parse: Ollama's error shape."""
        self.close_connection = True
        self.started = getattr(self, "started", time.perf_counter())
        self.kind = "bad"
        self._reply(code, "application/json; charset=utf-8", serve_ollama.error_body(message or "bad request"))
        self._access()

    # -- dispatch --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        try:
            self._route()
        except (ConnectionError, TimeoutError, BrokenPipeError):
            self.close_connection = True
            self.kind = self.kind if self.kind != "-" else "gone"
        except Exception as exc:  # a bug: the client gets an answer, the operator a warning
            self.close_connection = True
            self.server.options.warn(f"unexpected {type(exc).__name__} serving {self.command} {self.path}: {exc}")
            if not self.status:
                self._json(500, {"error": f"semcache serve: unexpected {type(exc).__name__}"})
        finally:
            if self.server.draining.is_set():
                self.close_connection = True
            self._access()

    def _route(self) -> None:
        token = self.server.options.token
        if token is not None and not _authorized(self.headers.get("Authorization", ""), token):
            self.kind = "denied"
            if self._read_body() is None:  # read, so the connection stays usable
                return
            self._json(401, {"error": "unauthorized: this semcache serve needs its bearer token"})
            return
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return
        if self.command == "POST" and path in CACHED_PATHS:
            self._cached(path, body)
        elif self.command == "POST" and path in OPENAI_PATHS:
            self._openai(path, body)
        elif self.command == "POST" and path in EMBED_PATHS:
            self._embed(path, body)
        elif self.command == "GET" and path == STATS_PATH:
            self._stats()
        else:
            self.kind = PASS
            self._pass(body)

    def _read_body(self) -> bytes | None:
        """The request's body, bounded; None when refused (and answered)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._json(411, {"error": "semcache serve needs a Content-Length (chunked request bodies are refused)"})
            return None
        raw = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw.isascii() or not raw.isdigit():
            self.close_connection = True
            self._json(400, {"error": "bad Content-Length"})
            return None
        length = int(raw)
        if length > self.server.options.max_body:
            self.close_connection = True  # its body is never read
            self._json(413, {"error": f"request body of {length:,} bytes is over the limit of "
                                      f"{self.server.options.max_body:,}"})
            return None
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise ConnectionResetError("the client sent less than its Content-Length")
        return data

    # -- the cache ---------------------------------------------------------------------------

    def _openai(self, path: str, body: bytes) -> None:
        """OpenAI's surface: translated to Ollama's API when the cache may answer, its
        replies written in OpenAI's shapes; otherwise passed through untouched."""
        native = serve_openai.translate(path, _decoded(body))
        if isinstance(native, str):
            self.kind = PASS
            self._pass(body)
            return
        native_path, native_body = native
        shape = serve_openai.OpenAIShape(path, str(native_body.get("model")))
        self._cached(native_path, json.dumps(native_body).encode("utf-8"), shape, body)

    def _cached(self, path: str, body: bytes, shape: serve_ollama.Shape = serve_ollama.OLLAMA,
                original: bytes | None = None) -> None:
        """/api/generate or /api/chat through the cache; `original`: the client's own
        body, when `body` is its translation (passed through as it came)."""
        settings = self.server.settings
        plan = serve_ollama.plan(path, _decoded(body), settings.max_query_chars)
        if plan.kind == PASS:
            self.kind = PASS
            self._pass(body if original is None else original)
            return
        self.shape = shape
        if self.server.options.log_prompts:
            self.query = plan.query
        relay = Relay(self._upstream(), path, body, plan, self._start_stream, self._stream_piece, shape)
        request = AskRequest(
            query=plan.query, scope=serve_ollama.scope(plan, settings.namespace), embed_model=settings.embed_model,
            threshold=settings.threshold, min_confidence=settings.min_confidence, ttl=settings.ttl,
            max_query_chars=settings.max_query_chars, guards=settings.guards, margin=settings.margin,
            scale=settings.scale, wait_s=settings.timeout, runtime_options=plan.runtime_options or {},
            generate=relay, semantic=plan.kind == SEMANTIC,
        )
        started = time.perf_counter()
        try:
            outcome = self._engine().ask(request)
        except ClientGone:
            self.kind = "gone"
            self.close_connection = True
            return
        except StoreError as exc:
            if not relay.replied and relay.pending is None:  # before Ollama was asked: the cache is skipped
                self.server.options.warn(f"the cache store failed ({exc}); passing the request through")
                self.kind = PASS
                self._pass(body if original is None else original)
                return
            self._failed(relay, exc)
            return
        except SemcacheError as exc:
            self._failed(relay, exc)
            return
        self.kind = outcome.source if outcome.hit else "miss"
        self.server.counters.count(self.kind)
        if outcome.hit:
            data, content_type = serve_ollama.cached_reply(plan, outcome.response, time.perf_counter() - started,
                                                           shape)
            self._reply(200, content_type, data, _outcome_headers(outcome), chunked=plan.stream)
        elif relay.pending is not None:
            self._reply(*relay.pending, _outcome_headers(outcome))
        elif self._streaming:
            self._end_stream()

    def _failed(self, relay: Relay, exc: SemcacheError) -> None:
        """A cached request that failed: Ollama's whole reply if it came (its answer not
        stored), the end of a stream already begun, or the error in the client's shape."""
        self.kind = "miss" if relay.replied or relay.pending else "error"
        if relay.pending is not None:
            self._reply(*relay.pending, {"X-Semcache": "miss"})
        elif relay.replied:
            self._end_stream_with_error(str(exc))
        else:
            self._ollama_error(exc)

    def _engine(self) -> Engine:
        """This connection's engine, its hits recorded in batches."""
        engine = self.server.cache.engine()
        if not isinstance(engine.store, _DeferredHits):
            engine.store = _DeferredHits(engine.store, self.server.hits)
        return engine

    def _upstream(self) -> Upstream:
        if self.upstream is None:
            settings = self.server.settings
            self.upstream = Upstream(settings.ollama_url, settings.timeout, os.environ.get("OLLAMA_API_KEY") or None)
        return self.upstream

    # A relayed miss: the reply is begun when Ollama's begins.
    _streaming = False

    def _start_stream(self, status: int, content_type: str, length: int | None) -> None:
        headers = {"X-Semcache": "miss"}
        if length is not None:
            self._head(status, content_type, length, headers)
            return
        self._head(status, content_type, None, headers)
        self._streaming = True

    def _stream_piece(self, data: bytes) -> None:
        if self._streaming:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)

    def _end_stream(self) -> None:
        self._streaming = False
        self.wfile.write(b"0\r\n\r\n")

    def _end_stream_with_error(self, message: str) -> None:
        """A streamed reply that broke: Ollama's way, an error line and the end."""
        if not self._streaming:
            self.close_connection = True  # a fixed-length reply cut short cannot be repaired
            return
        try:
            self._stream_piece(self.shape.error_line(message))
            self._end_stream()
        except OSError:
            self.close_connection = True

    def _ollama_error(self, exc: SemcacheError) -> None:
        status = 502 if isinstance(exc, OllamaUnreachable) else 500 if isinstance(exc, OllamaError) else 400 \
            if isinstance(exc, UsageError) else 500
        self._reply(status, "application/json; charset=utf-8", self.shape.error(serve_ollama.error_body(str(exc))))

    # -- embeddings: exact replies ---------------------------------------------------------

    def _embed(self, path: str, body: bytes) -> None:
        key = (path, body)
        found = self.server.embeds.get(key)
        if found is not None:
            self.kind = "exact"
            self.server.counters.count("embed-exact")
            self._reply(200, found[0], found[1], {"X-Semcache": "exact"})
            return
        self.kind = "miss"
        try:
            response = self._upstream().request("POST", self.path, {"Content-Type": "application/json"}, body)
            data = response.read(serve_ollama.MAX_REPLY_BYTES)
        except OllamaUnreachable as exc:
            self._ollama_error(exc)
            return
        except OSError as exc:
            self._upstream().close()
            self._json(502, {"error": f"Ollama's reply broke off ({exc})"})
            return
        content_type = response.fields.get("content-type", "application/json; charset=utf-8")
        if response.status == 200:
            self.server.embeds.put(key, content_type, data)
        self._reply(response.status, content_type, data, {"X-Semcache": "miss"})

    # -- stats -------------------------------------------------------------------------------

    def _stats(self) -> None:
        from semcache_cli import stats

        self.kind = "stats"
        engine = self.server.cache.engine()
        report = stats.collect(engine.store, time.time(), None, self.server.settings.threshold)
        counters = self.server.counters
        with counters.lock:
            report["serve"] = {"since": counters.started, "replies": dict(counters.by_kind),
                               "upstream": self.server.settings.ollama_url}
        self._json(200, report)

    # -- pass-through ------------------------------------------------------------------------

    def _pass(self, body: bytes) -> None:
        """The request as it came, to Ollama; its reply as it comes, to the client."""
        self.server.counters.count(PASS)
        headers = {name: value for name, value in self.headers.items() if name.lower() not in serve_ollama.HOP_BY_HOP
                   and not (self.server.options.token is not None and name.lower() == "authorization")}
        upstream = self._upstream()
        try:
            response = upstream.request(self.command, self.path, headers,
                                        body if body or self.command in ("POST", "PUT", "PATCH") else None)
        except OllamaUnreachable as exc:
            self._ollama_error(exc)
            return
        except ValueError:  # a header value no request may carry
            self._json(400, {"error": "a request header semcache cannot forward"})
            return
        fields = {name: value for name, value in response.fields.items()
                  if name not in serve_ollama.HOP_BY_HOP and name != "date"}  # ours is sent
        if self.command == "HEAD":
            upstream.close()  # its reply has no body, whatever its headers say
            self._head(response.status, fields.pop("content-type", ""), response.length or 0, fields)
            return
        length = response.length
        self._head(response.status, fields.pop("content-type", ""), length, fields)
        self._streaming = length is None
        try:
            while piece := response.some(PASS_PIECE_BYTES):
                self._stream_piece(piece)
                response.deadline = time.monotonic() + self.server.settings.timeout  # a long pull keeps going
        except OSError:
            upstream.close()
            self.close_connection = True
            return
        if self._streaming:
            self._end_stream()

    # -- writing -----------------------------------------------------------------------------

    def _json(self, status: int, obj: Any) -> None:
        self._reply(status, "application/json; charset=utf-8",
                    json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

    def _head(self, status: int, content_type: str, length: int | None, headers: dict[str, str] | None = None,
              data: bytes = b"") -> None:
        self.status = status
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}", f"Date: {_date()}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if self.close_connection or self.server.draining.is_set():
            lines.append("Connection: close")
            self.close_connection = True
        self.wfile.write("\r\n".join(lines).encode("latin-1", "replace") + b"\r\n\r\n" + data)

    def _reply(self, status: int, content_type: str, data: bytes, headers: dict[str, str] | None = None,
               chunked: bool = False) -> None:
        """A whole reply in one write; `chunked`: as Ollama streams, one chunk and the end."""
        if self.command == "HEAD":
            self._head(status, content_type, len(data), headers)
        elif chunked:
            self._head(status, content_type, None, headers, b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        else:
            self._head(status, content_type, len(data), headers, data)

    def _access(self) -> None:
        log = self.server.options.log
        if log is None or not getattr(self, "status", 0):
            return
        ms = (time.perf_counter() - self.started) * 1000
        path = self.path.split("?", 1)[0] if hasattr(self, "path") else "-"
        line = f"{self.client_address[0]} {getattr(self, 'command', '-')} {path} {self.status} {self.kind} {ms:.1f}ms"
        if self.query:
            line += f" {json.dumps(self.query, ensure_ascii=False)}"
        log(line)


def _decoded(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None


def _outcome_headers(outcome: Outcome) -> dict[str, str]:
    headers = {"X-Semcache": outcome.source if outcome.hit else "miss"}
    if outcome.entry_id is not None:
        headers["X-Semcache-Entry"] = str(outcome.entry_id)
    if outcome.miss_reason:
        headers["X-Semcache-Miss-Reason"] = outcome.miss_reason
    if outcome.similarity is not None:
        headers["X-Semcache-Similarity"] = f"{outcome.similarity:.4f}"
    return headers


def _authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    # compare_digest: the time taken does not tell how much of a guess was right
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8")) \
        and scheme.lower() == "bearer"


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def run(settings: config.Settings, options: ServeOptions, stop: threading.Event | None = None) -> None:
    """Serve until `stop` is set (the CLI sets it on SIGTERM or SIGINT), then drain."""
    if options.token is not None and not options.token.strip():
        raise UsageError("SEMCACHE_SERVE_TOKEN is set but empty")
    cache = Cache.from_settings(settings, options.warn)
    try:
        try:
            server = Server(cache, options)
        except OSError as exc:
            raise UsageError(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from None
        host, port = str(server.server_address[0]), int(server.server_address[1])
        options.ready(f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}")
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="semcache-serve",
                                  daemon=True)
        thread.start()
        stop = stop or threading.Event()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            server.shutdown()
            if not server.drain(settings.timeout):
                options.warn("requests still in flight after the timeout; leaving them")
            server.hits.stop()
            server.server_close()
    finally:
        cache.close()
