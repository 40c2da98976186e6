"""What `semcache serve` makes of one request of Ollama's API: whether the cache may
answer it and how (the plan), the replies it sends in Ollama's shapes, and the relay of
a miss to the real Ollama, whose answer is stored once it ended cleanly.

The rules, one per request field, are the table of docs/serve.md; in short:
- /api/generate: the prompt is the question; model, system, template, suffix, raw and
  the options that change the answer (config.scope_options) are the scope.
- /api/chat: the last message, a user turn, is the question; everything before it (the
  system prompt, earlier turns) and the tool definitions are fixed in the scope exactly,
  so a semantic hit only ever continues the same conversation.
- format, suffix and raw: exact hits only (the same text, the same scope).
- images, context (generate's token list), think (other than false), fields this
  version does not know, or a body that is not a JSON object: passed through, never
  cached. So is an answer that carries tool calls or thinking: it is relayed, not stored.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from semcache_cli import config, http11, policy
from semcache_cli.errors import GenerationFailed, OllamaError, OllamaUnreachable, UsageError
from semcache_cli.ollama import IDLE_LIMIT_S, MAX_LINE_BYTES, Generation, one_line

PASS = "pass"
SEMANTIC = "semantic"
EXACT = "exact"

GENERATE_FIELDS = {"model", "prompt", "system", "template", "options", "stream", "keep_alive", "format", "suffix",
                   "raw", "think", "images", "context", "truncate", "shift"}
CHAT_FIELDS = {"model", "messages", "tools", "options", "stream", "keep_alive", "format", "think", "truncate", "shift"}
MESSAGE_FIELDS = {"role", "content", "images", "tool_calls", "tool_name", "thinking"}
CACHED_PIECE_CHARS = 24  # a cached answer is streamed in pieces of about this many characters
MAX_REPLY_BYTES = 64 << 20  # a non-streamed upstream reply
CONNECT_TIMEOUT_S = 5.0
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length", "host"}


@dataclass
class Plan:
    """How the cache handles one request: `kind` is semantic, exact or pass (with why)."""

    kind: str
    why: str = ""
    endpoint: str = ""  # generate | chat
    model: str = ""
    query: str = ""
    system: str | None = None
    scope_options: dict[str, Any] | None = None
    runtime_options: dict[str, Any] | None = None
    format: Any = None
    stream: bool = True


def plan(path: str, body: Any, max_query_chars: int) -> Plan:
    """The plan for a POST to /api/generate or /api/chat with this (decoded) body."""
    if not isinstance(body, dict):
        return Plan(PASS, "the body is not a JSON object")
    endpoint = "generate" if path == "/api/generate" else "chat"
    unknown = set(body) - (GENERATE_FIELDS if endpoint == "generate" else CHAT_FIELDS)
    if unknown:
        return Plan(PASS, f"field {sorted(unknown)[0]!r}")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return Plan(PASS, "no model")
    for name in ("images", "context"):
        if body.get(name):
            return Plan(PASS, name)
    if body.get("think") not in (None, False):
        return Plan(PASS, "think")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        return Plan(PASS, "stream is not true or false")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        return Plan(PASS, "options is not an object")
    try:
        typed = {key: config.parse_option(key, value, "options") for key, value in options.items()}
    except UsageError:
        return Plan(PASS, "an option semcache does not know")  # Ollama decides what it means
    extra: dict[str, Any] = {}
    kind = SEMANTIC
    fmt = body.get("format")
    if fmt not in (None, ""):
        if fmt != "json" and not isinstance(fmt, dict):
            return Plan(PASS, "format")
        kind = EXACT
    else:
        fmt = None
    if endpoint == "generate":
        query, system = body.get("prompt"), body.get("system")
        if not isinstance(query, str) or not isinstance(system, str | None):
            return Plan(PASS, "prompt or system is not text")
        for name in ("template", "suffix", "raw"):
            value = body.get(name)
            if value in (None, "", False):
                continue
            if not isinstance(value, str | bool):
                return Plan(PASS, name)
            extra[f"serve:{name}"] = value
            if name != "template":
                kind = EXACT
        extra["serve:endpoint"] = "generate"
    else:
        chat = _chat(body)
        if isinstance(chat, str):
            return Plan(PASS, chat)
        query, system, before = chat
        if before:
            extra["serve:before"] = before
    if not query.strip() or len(query.strip()) > max_query_chars or "\x00" in query or not _utf8(query):
        return Plan(PASS, "the question is empty, too long or not text")
    scope = {**config.scope_options(typed), **extra}
    runtime = {key: value for key, value in typed.items() if key in config.RUNTIME_OPTIONS}
    return Plan(kind, "", endpoint, model.strip(), query, system or None, scope, runtime, fmt, stream)


def _chat(body: dict[str, Any]) -> tuple[str, str | None, str | None] | str:
    """(the last user turn, the leading system prompt, a hash of everything else before
    it and the tools), or why the chat cannot be cached."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    for message in messages:
        if not isinstance(message, dict) or set(message) - MESSAGE_FIELDS or not isinstance(message.get("content", ""), str):
            return "a message semcache does not know"
        if message.get("images"):
            return "images"
    last = messages[-1]
    if last.get("role") != "user" or last.get("tool_calls"):
        return "the last message is not a user turn"
    earlier = messages[:-1]
    system = None
    if earlier and earlier[0].get("role") == "system" and set(earlier[0]) <= {"role", "content"}:
        system, earlier = earlier[0].get("content") or None, earlier[1:]
    fixed: dict[str, Any] = {}
    if earlier:
        fixed["messages"] = earlier
    if body.get("tools"):
        fixed["tools"] = body["tools"]
    before = None
    if fixed:
        canonical = json.dumps(fixed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        before = policy.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return last.get("content", ""), system, before


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scope(plan: Plan, namespace: str) -> policy.Scope:
    return policy.Scope(namespace, plan.model, plan.system, plan.scope_options or {}, plan.format)


# -- replies in Ollama's shapes ------------------------------------------------------------


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class Shape:
    """How replies are written to the client: Ollama's own (NDJSON, relayed verbatim),
    or another API's (serve_openai.OpenAIShape) made from Ollama's chunks."""

    stream_type = "application/x-ndjson"
    verbatim = True  # a relayed line is sent as it came

    def whole(self, chunk: dict[str, Any]) -> bytes:
        return _line(chunk)[:-1]

    def line(self, chunk: dict[str, Any]) -> bytes:
        return _line(chunk)

    def end(self) -> bytes:
        return b""

    def error(self, data: bytes) -> bytes:
        return data

    def error_line(self, message: str) -> bytes:
        """The last line of a stream that broke."""
        return error_body(message) + b"\n"


OLLAMA = Shape()


def cached_reply(plan: Plan, text: str, elapsed_s: float, shape: Shape = OLLAMA) -> tuple[bytes, str]:
    """A cached answer as Ollama would send it (or in `shape`): (body, content type).
    Streamed: pieces of the text, then the done chunk; otherwise one object."""
    created = now_text()
    nanos = max(1, int(elapsed_s * 1e9))
    final = {"done": True, "done_reason": "stop", "total_duration": nanos, "load_duration": 0,
             "prompt_eval_count": 0, "prompt_eval_duration": 0, "eval_count": 0, "eval_duration": 0}

    def chunk(piece: str, done: bool) -> dict[str, Any]:
        head: dict[str, Any] = {"model": plan.model, "created_at": created}
        if plan.endpoint == "chat":
            head["message"] = {"role": "assistant", "content": piece}
        else:
            head["response"] = piece
        return {**head, **final} if done else {**head, "done": False}

    if not plan.stream:
        return shape.whole(chunk(text, True)), "application/json; charset=utf-8"
    lines = [shape.line(chunk(piece, False)) for piece in pieces(text)]
    lines.append(shape.line(chunk("", True)))
    lines.append(shape.end())
    return b"".join(lines), shape.stream_type


_WORDS = re.compile(r"\S*\s*")


def pieces(text: str) -> list[str]:
    """The text cut at word ends into pieces of about CACHED_PIECE_CHARS."""
    out: list[str] = []
    current = ""
    for word in _WORDS.findall(text):
        current += word
        if len(current) >= CACHED_PIECE_CHARS:
            out.append(current)
            current = ""
    if current or not out:
        out.append(current)
    return out


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")


# -- the upstream -----------------------------------------------------------------------


class ClientGone(GenerationFailed):
    """The client disconnected mid-answer: the generation is dropped, nothing stored."""


class Upstream:
    """One thread's kept-alive connection to the real Ollama (http11.Connection)."""

    def __init__(self, url: str, timeout: float, api_key: str | None = None) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._conn: http11.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> http11.Response:
        """Send one request; the reply's head within the timeout. OllamaUnreachable when
        no reply comes (refused, timed out, closed before replying)."""
        deadline = time.monotonic() + self.timeout
        for retry in (False, True):
            reused = self._conn is not None and self._conn.idle()
            if not reused:
                self.close()
                try:
                    self._conn = http11.Connection(self.host, self.port, self.https,
                                                   min(deadline, time.monotonic() + CONNECT_TIMEOUT_S))
                except OSError as exc:
                    raise OllamaUnreachable(f"cannot reach Ollama at {self.url} ({one_line(str(exc), 80)})") from None
            assert self._conn is not None
            try:
                return self._conn.request(method, self.prefix + target, {**headers, **self.auth}, body, deadline)
            except http11.NoReply:
                self.close()
                if reused and not retry:
                    continue  # a kept-alive connection the server let go meanwhile
                raise OllamaUnreachable(f"Ollama at {self.url} closed the connection before replying") from None
            except TimeoutError:
                self.close()
                raise OllamaUnreachable(f"Ollama at {self.url} did not reply within {self.timeout:g} s") from None
            except OSError as exc:
                self.close()
                raise OllamaUnreachable(f"Ollama at {self.url} broke the connection ({one_line(str(exc), 80)})") \
                    from None
        raise AssertionError("unreachable")


class Relay:
    """A miss: the client's own request sent to Ollama, its reply relayed to the client
    as it comes (a streamed one line by line), and the answer handed to the engine to
    store only when it ended with done:true and nothing went wrong.

    `start(status, content_type, length)` begins the client's reply, `send(data)` writes
    to it and raises OSError when the client is gone."""

    def __init__(self, upstream: Upstream, path: str, body: bytes, plan: Plan,
                 start: Callable[[int, str, int | None], None], send: Callable[[bytes], None],
                 shape: Shape = OLLAMA) -> None:
        self.upstream, self.path, self.body, self.plan, self.shape = upstream, path, body, plan, shape
        self.start, self.send = start, send
        self.replied = False  # the client's reply has begun: an error now cannot become a 502
        # A whole (not streamed) reply of Ollama's, to send once the answer is stored (or
        # refused): a client that asks again at once then finds it. (status, type, body)
        self.pending: tuple[int, str, bytes] | None = None

    def __call__(self, query: str, req: Any, on_token: Callable[[str], None]) -> Generation:
        response = self.upstream.request("POST", self.path, {"Content-Type": "application/json"}, self.body)
        try:
            if response.status != 200 or not self.plan.stream:
                return self._whole(response)
            return self._streamed(response)
        except BaseException:
            self.upstream.close()  # mid-reply: the rest must never be read as the next reply
            raise

    def _whole(self, response: http11.Response) -> Generation:
        try:
            data = response.read(MAX_REPLY_BYTES)
        except OSError as exc:
            raise OllamaUnreachable(f"Ollama at {self.upstream.url} dropped the reply ({one_line(str(exc), 80)})") \
                from None
        content_type = response.fields.get("content-type", "application/json; charset=utf-8")
        if response.status != 200:
            self._reply(response.status, content_type, self.shape.error(data))
            text = one_line(data.decode("utf-8", "replace"))
            raise OllamaError(f"Ollama answered {response.status}: {text}")
        chunk = _chunk(data)
        if not self.shape.verbatim:
            data = self.shape.whole(chunk)
        self.pending = (200, content_type, data)  # the client gets it, stored or not
        return answer_of(self.plan, [chunk])

    def _reply(self, status: int, content_type: str, data: bytes) -> None:
        self.replied = True
        try:
            self.start(status, content_type, len(data))
            self.send(data)
        except OSError:
            raise ClientGone("the client went away before the reply; nothing was stored") from None

    def _streamed(self, response: http11.Response) -> Generation:
        chunks: list[dict[str, Any]] = []
        started = False
        while True:
            try:
                line = response.readline(MAX_LINE_BYTES)
            except OSError as exc:
                raise GenerationFailed(f"Ollama's stream broke off ({one_line(str(exc), 80)}); nothing was stored") \
                    from None
            if not line:
                break
            if not line.strip():
                continue
            chunk = _chunk(line)  # checked before it is sent on: a client never gets a broken line
            if "error" in chunk:  # the caller ends the client's stream with it, in the client's shape
                raise GenerationFailed(f"Ollama failed mid-answer: {one_line(str(chunk['error']))}; nothing was stored")
            if not started:
                started = True
                self.replied = True
                try:
                    self.start(200, self.shape.stream_type, None)
                except OSError:
                    raise ClientGone("the client went away; nothing was stored") from None
            try:
                self.send(line if self.shape.verbatim else self.shape.line(chunk) + (
                    self.shape.end() if chunk.get("done") is True else b""))
            except OSError:
                raise ClientGone("the client went away mid-answer; nothing was stored") from None
            chunks.append(chunk)
            response.deadline = time.monotonic() + min(self.upstream.timeout, IDLE_LIMIT_S)
        if not started:
            raise GenerationFailed("Ollama sent an empty reply; nothing was stored")
        return answer_of(self.plan, chunks)


def _chunk(raw: bytes) -> dict[str, Any]:
    try:
        chunk = json.loads(raw)
    except (ValueError, RecursionError):
        raise GenerationFailed("Ollama sent a line that is not JSON; nothing was stored") from None
    if not isinstance(chunk, dict):
        raise GenerationFailed("Ollama sent a line that is not a JSON object; nothing was stored")
    return chunk


def answer_of(plan: Plan, chunks: list[dict[str, Any]]) -> Generation:
    """The answer in Ollama's reply chunks (one object when not streamed), or
    GenerationFailed when it must not be stored: no done:true, an error line, tool
    calls or thinking in it."""
    parts: list[str] = []
    for chunk in chunks:
        if "error" in chunk:
            raise GenerationFailed(f"Ollama failed mid-answer: {one_line(str(chunk['error']))}; nothing was stored")
        if plan.endpoint == "chat":
            message = chunk.get("message") or {}
            if not isinstance(message, dict) or message.get("tool_calls") or message.get("thinking"):
                raise GenerationFailed("the answer carries tool calls or thinking; relayed, not stored")
            piece = message.get("content", "")
        else:
            if chunk.get("thinking"):
                raise GenerationFailed("the answer carries thinking; relayed, not stored")
            piece = chunk.get("response", "")
        if not isinstance(piece, str):
            raise GenerationFailed("Ollama sent a malformed chunk; nothing was stored")
        parts.append(piece)
        if chunk.get("done") is True:
            reason = chunk.get("done_reason")
            return Generation("".join(parts), reason if isinstance(reason, str) else None,
                              _count(chunk.get("prompt_eval_count")), _count(chunk.get("eval_count")),
                              chunk["total_duration"] / 1e9 if _count(chunk.get("total_duration")) else None)
    raise GenerationFailed("Ollama's answer ended without done:true; nothing was stored")


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None
