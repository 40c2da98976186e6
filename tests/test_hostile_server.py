"""semcache's Ollama client against servers that misbehave on purpose: raw sockets on
loopback that trickle, flood, break framing or send replies of the wrong shape.

Each test asserts what the client does (the exception class and its message, through the
CLI the one line on stderr, the exit code and an empty cache), never how long it took: a
generous thread or subprocess timeout only guards against a hang. Memory bounds are
checked by how much the server managed to send before the client hung up."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, run_proc, stored
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcache_cli.errors import GenerationFailed, ModelNotFound, OllamaError, OllamaUnreachable
from semcache_cli.ollama import MAX_ANSWER_CHARS, MAX_LINE_BYTES, Generation, OllamaClient


@pytest.fixture(autouse=True)
def _no_reference_bootstrap(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about a hostile server's replies: a new cache's one-off embedding of the reference
    questions (tests/test_cold_start.py) would add a request and a status line to each."""
    monkeypatch.setenv("SEMCACHE_SCALE", "cosine")

Q = "how do hostile servers look"
USER = [{"role": "user", "content": Q}]
MiB = 1 << 20
FLOOD = 1024 * MiB  # what a flooding server would send if the client kept reading
# What it manages to send once the client stops at a bound: the client's bound plus the
# kernel's socket buffers on both sides (up to 32 MiB + 4 MiB on common Linux settings).
SENT_BOUND = 128 * MiB
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
METRICS = {"total_duration": 4935886791, "load_duration": 534986708, "prompt_eval_count": 26,
           "prompt_eval_duration": 107345000, "eval_count": 3, "eval_duration": 4289432000}


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def line(obj: Any) -> bytes:
    return chunk(json.dumps(obj).encode() + b"\n")


def token(text: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "created_at": "2025-10-26T17:21:21.196249Z",
            "message": {"role": "assistant", "content": text}, "done": False, **fields}


def final(**fields: Any) -> dict[str, Any]:
    return {**token(""), "done": True, "done_reason": "stop", **METRICS, **fields}


def json_reply(status: int, obj: Any, reason: str = "OK") -> bytes:
    body = json.dumps(obj).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Wire:
    """One accepted connection, for a route handler to write to as it likes."""

    def __init__(self, conn: socket.socket, server: Hostile) -> None:
        self.conn = conn
        self.server = server

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)
        with self.server.lock:
            self.server.sent += len(data)

    def pace(self, seconds: float) -> None:
        """Wait between trickled pieces; the test ending stops the handler."""
        if self.server.stopping.wait(seconds):
            raise ConnectionAbortedError("the test is over")

    def answer(self, *chunks: dict[str, Any] | bytes) -> None:
        self.send(STREAM_HEAD + b"".join(c if isinstance(c, bytes) else line(c) for c in chunks) + b"0\r\n\r\n")


Handler = Callable[[Wire, dict[str, Any]], Any]


def good_embed(wire: Wire, body: dict[str, Any]) -> None:
    texts = body.get("input") or []
    wire.send(json_reply(200, {"model": body.get("model"), "embeddings": [[0.5, 0.5, 0.5, 0.5]] * len(texts)}))


def good_chat(wire: Wire, body: dict[str, Any]) -> None:
    wire.answer(token("one "), token("two "), token("three"), final())


class Hostile:
    """A raw-socket HTTP server on loopback: each request is read (head and Content-Length
    body), then the handler of its path writes whatever bytes it likes. A handler that
    returns True keeps the connection for the next request."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = {"/api/embed": good_embed, "/api/chat": good_chat, **routes}
        self.lock = threading.Lock()
        self.sent = 0
        self.paths: list[str] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(60)  # a test that fails must not leave this thread for ever
        with conn, conn.makefile("rb") as incoming:
            while True:
                head = [incoming.readline(65536)]
                while head[-1] not in (b"\r\n", b"\n", b""):
                    head.append(incoming.readline(65536))
                if not head[0]:
                    return
                fields = dict(h.decode().split(":", 1) for h in head[1:-1])
                length = int(next((v for k, v in fields.items() if k.lower() == "content-length"), "0"))
                body = json.loads(incoming.read(length) or b"{}")
                path = head[0].split()[1].decode()
                with self.lock:
                    self.paths.append(path)
                try:
                    keep = self.routes[path](Wire(conn, self), body)
                except OSError:  # the client hung up, or the test ended
                    return
                except BaseException as exc:  # a bug in the test's handler: the test reports it
                    self.errors.append(exc)
                    return
                if not keep:
                    return

    def close(self) -> None:
        self.stopping.set()
        self._listener.close()
        assert not self.errors, self.errors


@pytest.fixture
def hostile() -> Iterator[Callable[..., Hostile]]:
    servers: list[Hostile] = []

    def start(**routes: Handler) -> Hostile:
        servers.append(Hostile({f"/api/{name}": handler for name, handler in routes.items()}))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def within(call: Callable[[], Any], seconds: float = 30) -> Any:
    """call() in a thread, its result or its exception; a hang fails the test."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the test
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the client still waits after {seconds} s: no deadline held")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def chat(server: Hostile, timeout: float = 5.0, seen: list[str] | None = None) -> Generation:
    client = OllamaClient(server.url, timeout, sleep=lambda _: None)
    try:
        return within(lambda: client.chat("llama3.2", USER, {}, on_token=(seen if seen is not None else []).append))
    finally:
        client.close()


def embed(server: Hostile, texts: list[str] | None = None, timeout: float = 5.0) -> Any:
    client = OllamaClient(server.url, timeout, sleep=lambda _: None)
    try:
        return within(lambda: client.embed("nomic-embed-text", texts or ["x"]))
    finally:
        client.close()


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("semcache: error: ")
    return lines[0]


def entries(db: Path) -> int:
    return len(stored(db))


# -- 1. every field of the final chunk checked for type and range ---------------------------

@pytest.mark.parametrize("fields", [
    {"eval_count": "many"}, {"eval_count": -3}, {"eval_count": 2.5}, {"eval_count": True}, {"eval_count": 10**30},
    {"eval_count": None}, {"prompt_eval_count": [26]}, {"prompt_eval_count": {"n": 1}}, {"prompt_eval_count": -1},
    {"total_duration": "4s"}, {"total_duration": -1}, {"total_duration": 1e300}, {"total_duration": False},
    {"total_duration": [1]}, {"total_duration": 10**40},
], ids=repr)
def test_a_metric_of_the_wrong_type_or_range_is_dropped_never_kept(hostile, fields: dict[str, Any]) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("one "), token("two"), final(**fields)))
    generation = chat(server)
    assert generation.text == "one two" and generation.done_reason == "stop"
    for name, key in (("prompt_tokens", "prompt_eval_count"), ("completion_tokens", "eval_count")):
        value = getattr(generation, name)
        assert value is None if key in fields else (type(value) is int and value == METRICS[key])
    if "total_duration" in fields:
        assert generation.total_s is None
    else:
        assert type(generation.total_s) is float and generation.total_s == pytest.approx(4.935886791)


def test_metrics_within_range_are_kept_exactly_typed(hostile) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("hi"), final(eval_count=0, prompt_eval_count=7, total_duration=0)))
    generation = chat(server)
    assert (generation.prompt_tokens, generation.completion_tokens, generation.total_s) == (7, 0, 0.0)
    assert type(generation.total_s) is float


@pytest.mark.parametrize("reason", [42, ["stop"], {"r": "stop"}, True, "stop\x1b[31m", "x" * 1000, "st op"], ids=repr)
def test_a_malformed_done_reason_fails_the_answer(hostile, reason: Any) -> None:
    # done_reason decides whether an answer is stored ("length" is not): never guessed.
    server = hostile(chat=lambda w, b: w.answer(token("one"), final(done_reason=reason)))
    with pytest.raises(GenerationFailed, match="malformed done_reason"):
        chat(server)


@pytest.mark.parametrize("reason", [None, ""])
def test_an_absent_done_reason_is_none(hostile, reason: Any) -> None:  # servers before v0.1.35
    server = hostile(chat=lambda w, b: w.answer(token("one"), final(done_reason=reason)))
    assert chat(server).done_reason is None


def test_through_the_cli_bad_metrics_are_stored_as_nulls(hostile, isolated_env: Path, monkeypatch) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("one two"), final(eval_count="many", prompt_eval_count=-5,
                                                                      total_duration=1e300)))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    result = run_cli("ask", "-q", Q)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "one two\n", "")
    (entry,) = stored(isolated_env)
    assert (entry.prompt_tokens, entry.completion_tokens, entry.generation_s) == (None, None, None)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["content", "role", "x"]), inner, max_size=3),
    max_leaves=8)
CHUNK_KEYS = ["message", "done", "done_reason", "eval_count", "prompt_eval_count", "total_duration", "error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(CHUNK_KEYS), JSON_VALUES, max_size=6), min_size=1, max_size=4))
def test_any_chunks_give_an_exactly_typed_generation_or_one_clean_error(hostile, chunks: list[dict[str, Any]]) -> None:
    server = hostile(chat=lambda w, b: w.answer(*chunks))
    try:
        generation = chat(server)
    except OllamaError as exc:  # GenerationFailed for a broken answer; never anything outside the tree
        assert "\n" not in str(exc)
        return
    assert type(generation.text) is str and generation.text.encode("utf-8")
    assert generation.done_reason is None or type(generation.done_reason) is str
    for count in (generation.prompt_tokens, generation.completion_tokens):
        assert count is None or (type(count) is int and count >= 0)
    total = generation.total_s
    assert total is None or (type(total) is float and math.isfinite(total) and total >= 0)


# -- 2. only JSON true ends an answer -------------------------------------------------------

@pytest.mark.parametrize("done", ["false", "true", 1, 0, None, [], {}], ids=repr)
def test_done_that_is_not_a_bool_is_a_malformed_reply(hostile, done: Any) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("a ", done=done), token("b"), final()))
    seen: list[str] = []
    with pytest.raises(GenerationFailed, match="malformed chunk"):
        chat(server, seen=seen)
    assert seen == []  # the bad chunk's text was never handed on


def test_done_false_as_a_string_never_ends_the_answer_through_the_cli(hostile, isolated_env: Path, monkeypatch) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("first", done="false"), token(" second"), final()))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    result = run_cli("ask", Q)
    assert result.exit_code == 1
    assert "malformed" in one_line_error(result.stderr) and "nothing was stored" in result.stderr
    assert entries(isolated_env) == 0


# -- 3. a chunk of the wrong shape is one clear failure ---------------------------------------

@pytest.mark.parametrize(("chunk_bytes", "message"), [
    (line({"model": "m", "message": "hello", "done": False}), "message is not an object"),
    (line({"model": "m", "message": None, "done": False}), "message is not an object"),
    (line({"model": "m", "message": ["x"], "done": False}), "message is not an object"),
    (line(token(42)), "content is not a string"),
    (line(token(None)), "content is not a string"),
    (line(token({"text": "x"})), "content is not a string"),
    (chunk(b'{"message": {"role": "assistant", "content": "bad \\ud800 half"}, "done": false}\n'), "lone surrogate"),
    (chunk(b'{"message": {"content": "x"}, "done": false, "n": NaN}\n'), "malformed JSON"),
    (chunk(b'{"message": {"content": "\xff\xfe"}, "done": false}\n'), "malformed JSON"),  # not UTF-8
    (chunk(b"[" * 100_000 + b"\n"), "malformed JSON"),  # RecursionError in json
    (chunk(b'"just a string"\n'), "malformed JSON"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_malformed_chunk_fails_the_answer_after_the_text_before_it(hostile, chunk_bytes: bytes, message: str) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("fine "), chunk_bytes, final()))
    seen: list[str] = []
    with pytest.raises(GenerationFailed, match=message):
        chat(server, seen=seen)
    assert seen == ["fine "]


@pytest.mark.parametrize("bad", [
    line({"message": "hello", "done": False}),
    line(token(42)),
    chunk(b'{"message": {"content": "\\udfff"}, "done": false}\n'),
], ids=["message-str", "content-int", "surrogate"])
def test_through_the_cli_a_malformed_chunk_is_one_line_exit_1_nothing_stored(hostile, isolated_env: Path, monkeypatch,
                                                                          bad: bytes) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("fine "), bad, final()))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    result = run_cli("ask", Q)
    assert result.exit_code == 1 and result.stdout == "fine "
    assert "nothing was stored" in one_line_error(result.stderr)
    assert entries(isolated_env) == 0


@pytest.mark.parametrize("embeddings", [
    "[[true, false, true, false]]", "[[0.1, \"0.2\"]]", "[[NaN, 1.0]]", "[[Infinity, 1.0]]",
    "[[]]", "[[0.1], [0.2]]", "[0.1, 0.2]", "{\"a\": 1}", "null", "[[null]]",
    "[[" + "1" * 5000 + "]]",
], ids=lambda v: v[:24])
def test_malformed_embeddings_are_an_ollama_error(hostile, embeddings: str) -> None:
    body = ('{"model": "nomic-embed-text", "embeddings": ' + embeddings + "}").encode()
    reply = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    server = hostile(embed=lambda w, b: w.send(reply))
    with pytest.raises(OllamaError, match="malformed embeddings|not a JSON object") as caught:
        embed(server)
    assert type(caught.value) is OllamaError


@pytest.mark.parametrize("unusable", ["[1e999, 1.0]", "[1e39, 1.0]", "[0, 0, 0.0]"],
                         ids=["overflow", "float32-overflow", "zeros"])
def test_a_vector_with_no_direction_is_none_and_costs_its_batch_nothing(hostile, unusable: str) -> None:
    # All zeros, or not finite once float32: never stored, never compared; the others kept.
    good = "[0.6, 0.8, 0.0]" if unusable.count(",") == 2 else "[0.6, 0.8]"
    body = f'{{"model": "nomic-embed-text", "embeddings": [{good}, {unusable}, {good}]}}'.encode()
    reply = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    server = hostile(embed=lambda w, b: w.send(reply))
    client = OllamaClient(server.url, 5)
    try:
        rows = client.embed("nomic-embed-text", ["a", "b", "c"])
    finally:
        client.close()
    assert rows[1] is None and list(rows[0] or []) == pytest.approx([0.6, 0.8, 0.0][:len(rows[0] or [])])
    assert rows[2] == rows[0]


def test_through_the_cli_a_question_with_no_direction_is_answered_without_the_semantic_layer(
        hostile, isolated_env: Path, monkeypatch) -> None:
    body = b'{"model": "nomic-embed-text", "embeddings": [[0, 0, 0, 0]]}'
    zero = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    server = hostile(embed=lambda w, b: w.send(zero), chat=lambda w, b: w.answer(token("an answer"), final()))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    result = run_cli("ask", Q)
    assert result.exit_code == 0 and result.stdout == "an answer\n"
    warning = result.stderr.splitlines()[0]
    assert warning.startswith("semcache: warning: embedding failed (") and "unusable vector (all zeros" in warning
    (entry,) = stored(isolated_env)
    assert entry.embed_model is None and entry.dims is None  # stored without it: never compared


# -- 6. wall-clock deadlines, whatever the server trickles ------------------------------------

def trickle_head(wire: Wire, body: dict[str, Any]) -> None:
    wire.send(b"HTTP/1.1 200 OK\r\n")
    for n in range(10_000):  # a header line now and then, for ever
        wire.pace(0.2)
        wire.send(f"X-Slow-{n}: y\r\n".encode())


def endless_continue(wire: Wire, body: dict[str, Any]) -> None:
    while True:
        wire.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        wire.pace(0.5)


def trickle_bytes(prefix: bytes, data: bytes, every: float = 0.1) -> Handler:
    def handler(wire: Wire, body: dict[str, Any]) -> None:
        wire.send(prefix)
        for i in range(len(data)):
            wire.pace(every)
            wire.send(data[i:i + 1])
    return handler


FIRST_LINE_TRICKLED = trickle_bytes(STREAM_HEAD, line(token("never complete " * 100)))
MID_ANSWER_TRICKLED = trickle_bytes(STREAM_HEAD + line(token("one ")) + line(token("two ")), line(token("x" * 2000)))


def empty_chunks_forever(wire: Wire, body: dict[str, Any]) -> None:
    wire.send(STREAM_HEAD)
    while True:
        wire.send(line(token("")))
        wire.pace(0.2)


@pytest.mark.parametrize("handler", [trickle_head, endless_continue, FIRST_LINE_TRICKLED, empty_chunks_forever],
                         ids=["head-trickled", "endless-100-continue", "first-line-trickled", "no-text-ever"])
def test_a_reply_trickled_past_the_timeout_times_out(hostile, handler: Handler) -> None:
    server = hostile(chat=handler)
    with pytest.raises(OllamaUnreachable, match="timed out after 0.5 s without replying"):
        chat(server, timeout=0.5)


def test_an_answer_that_stalls_mid_way_times_out_after_its_text(hostile) -> None:
    server = hostile(chat=MID_ANSWER_TRICKLED)
    seen: list[str] = []
    with pytest.raises(OllamaUnreachable, match="timed out mid-answer: no new text for 0.5 s; nothing was stored"):
        chat(server, timeout=0.5, seen=seen)
    assert seen == ["one ", "two "]


def test_an_embedding_body_trickled_past_the_timeout_times_out(hostile) -> None:
    body = json.dumps({"embeddings": [[0.5] * 400]}).encode()
    server = hostile(embed=trickle_bytes(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode(), body, 0.05))
    with pytest.raises(OllamaUnreachable, match="timed out after 0.5 s"):
        embed(server, timeout=0.5)


def test_a_long_answer_that_keeps_streaming_is_never_cut(hostile) -> None:
    def slow_but_steady(wire: Wire, body: dict[str, Any]) -> None:
        wire.send(STREAM_HEAD)
        for i in range(6):  # past the 1 s timeout in all, each token well within it
            wire.send(line(token(f"t{i} ")))
            wire.pace(0.2)
        wire.send(line(final()) + b"0\r\n\r\n")

    generation = chat(hostile(chat=slow_but_steady), timeout=1.0)
    assert generation.text == "".join(f"t{i} " for i in range(6))


def test_a_complete_answer_is_not_held_up_by_a_body_that_never_ends(hostile) -> None:
    def done_then_silence(wire: Wire, body: dict[str, Any]) -> None:
        wire.send(STREAM_HEAD + line(token("all ")) + line(token("there")) + line(final()))  # no last chunk
        wire.pace(120)

    server = hostile(chat=done_then_silence)
    client = OllamaClient(server.url, timeout=60.0)
    try:
        generation = within(lambda: client.chat("llama3.2", USER, {}), seconds=20)
    finally:
        client.close()
    assert (generation.text, generation.done_reason) == ("all there", "stop")


def test_an_error_or_redirect_body_that_never_ends_does_not_hold_the_reply_up(hostile) -> None:
    def error_then_silence(wire: Wire, body: dict[str, Any]) -> None:
        wire.send(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\n{\"err")
        wire.pace(120)

    with pytest.raises(OllamaError, match=r"failed: no reason given \(HTTP 500\)"):
        chat(hostile(chat=error_then_silence), timeout=60.0)

    def redirect_then_silence(wire: Wire, body: dict[str, Any]) -> bool:
        wire.send(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /api/embed\r\nContent-Length: 100\r\n\r\nmoved")
        wire.pace(120)
        return False

    server = hostile(chat=redirect_then_silence, embed=lambda w, b: w.answer(token("fine"), final()))
    assert chat(server, timeout=60.0).text == "fine"


def test_through_the_cli_a_trickled_answer_exits_4_and_stores_nothing(hostile, isolated_env: Path) -> None:
    server = hostile(chat=MID_ANSWER_TRICKLED)
    result = run_proc("ask", Q, "--timeout", "1s", env={"OLLAMA_HOST": server.url}, timeout=60)
    assert result.exit_code == 4 and result.stdout == "one two "
    assert "timed out mid-answer" in one_line_error(result.stderr)
    assert entries(isolated_env) == 0


def test_through_the_cli_a_trickled_head_exits_4(hostile, isolated_env: Path) -> None:
    server = hostile(embed=trickle_head)
    result = run_proc("ask", Q, "--timeout", "1s", env={"OLLAMA_HOST": server.url}, timeout=60)
    assert result.exit_code == 4 and "timed out" in one_line_error(result.stderr)


# -- 7. memory is bounded -----------------------------------------------------------------------

def flood(prefix: bytes, piece: bytes, total: int, framing: Callable[[bytes], bytes] = lambda b: b) -> Handler:
    """prefix, then `piece` over and over up to `total` bytes, as fast as the client takes them."""
    def handler(wire: Wire, body: dict[str, Any]) -> None:
        wire.send(prefix)
        for _ in range(total // len(piece)):
            wire.send(framing(piece))
    return handler


def test_an_ndjson_line_that_never_ends_is_refused_at_its_bound(hostile) -> None:
    server = hostile(chat=flood(STREAM_HEAD + chunk(b'{"message": {"content": "'), b"a" * 65536, FLOOD, chunk))
    with pytest.raises(GenerationFailed, match=f"a line longer than {MAX_LINE_BYTES:,} bytes"):
        chat(server)
    assert server.sent < SENT_BOUND, server.sent  # the client hung up near its bound, not at the end of the flood


def test_an_answer_past_its_bound_fails_and_the_client_stops_reading(hostile) -> None:
    server = hostile(chat=flood(STREAM_HEAD, line(token("x" * 60_000)), FLOOD))
    seen: list[str] = []
    with pytest.raises(GenerationFailed, match=f"answer longer than {MAX_ANSWER_CHARS:,} characters"):
        chat(server, seen=seen)
    assert sum(map(len, seen)) <= MAX_ANSWER_CHARS
    assert server.sent < SENT_BOUND, server.sent


def test_millions_of_header_lines_are_refused_at_the_bound(hostile) -> None:
    headers = b"".join(b"X-H-%07d: %s\r\n" % (i, b"v" * 112) for i in range(4096))  # 128 bytes a line
    server = hostile(embed=flood(b"HTTP/1.1 200 OK\r\n", headers, 1024 * len(headers)))  # 4,194,304 lines, 512 MiB
    with pytest.raises(OllamaError, match="more than 100 fields") as caught:
        embed(server)
    assert not isinstance(caught.value, OllamaUnreachable)
    assert server.sent < SENT_BOUND, server.sent


@pytest.mark.parametrize(("prefix", "piece", "message"), [
    (b"HTTP/1.1 200 ", b"x" * 65536, "status line too long"),
    (b"HTTP/1.1 200 OK\r\nX-Big: ", b"x" * 65536, "head longer than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n", b"[" * 65536, "1073741824 bytes, more than"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b'{"embeddings": '), chunk(b"[" * 65536),
     "reply longer than"),
    (b"HTTP/1.1 200 OK\r\n\r\n", b"[" * 65536, "reply longer than"),  # to the end of the connection
], ids=["status-line", "header", "content-length", "chunked", "until-close"])
def test_an_embedding_reply_past_its_bounds_is_refused(hostile, prefix: bytes, piece: bytes, message: str) -> None:
    server = hostile(embed=flood(prefix, piece, FLOOD))
    with pytest.raises(OllamaError, match=message) as caught:
        embed(server)
    assert type(caught.value) is OllamaError
    assert server.sent < SENT_BOUND, server.sent


def test_the_embedding_bound_scales_with_the_batch(hostile) -> None:
    vector = [0.0123456789] * 4096  # as wide as embedding models come, 70 KB of JSON each
    def big(wire: Wire, body: dict[str, Any]) -> None:
        wire.send(json_reply(200, {"embeddings": [vector] * len(body["input"])}))

    server = hostile(embed=big)
    assert len(embed(server, [f"text {i}" for i in range(256)])) == 256  # a replay batch: 18 MB of JSON


def test_a_deeply_nested_embedding_body_is_malformed_not_a_crash(hostile) -> None:
    body = b'{"embeddings": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    server = hostile(embed=lambda w, b: w.send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body))
    with pytest.raises(OllamaError, match="not a JSON object"):
        embed(server)


def test_through_the_cli_an_endless_line_is_one_line_exit_1(hostile, isolated_env: Path, monkeypatch) -> None:
    server = hostile(chat=flood(STREAM_HEAD + line(token("start ")) + chunk(b'{"a": "'), b"b" * 65536, 256 * MiB, chunk))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    result = run_cli("ask", Q)
    assert result.exit_code == 1 and result.stdout == "start "
    assert "line longer than" in one_line_error(result.stderr)
    assert entries(isolated_env) == 0


# -- 8. an unusable embedding reply is an Ollama error, not "unreachable" -------------------------

BAD_FRAMES = {
    "chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n{}",
    "transfer-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b",
    "cut-short": b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"embeddings\": [[0.1",
    "folded-header": b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\n{}",
    "interim-flood": b"HTTP/1.1 102 Processing\r\n\r\n" * 50,
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    "status-0": b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_a_bad_frame_on_embed_is_an_ollama_error(hostile, name: str) -> None:
    server = hostile(embed=lambda w, b: w.send(BAD_FRAMES[name]))
    with pytest.raises(OllamaError) as caught:
        embed(server)
    assert type(caught.value) is OllamaError, caught.value
    assert str(caught.value).startswith(f"Ollama at {server.url} ")


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_a_bad_frame_on_chat_fails_the_answer(hostile, name: str) -> None:
    server = hostile(chat=lambda w, b: w.send(BAD_FRAMES[name]))
    with pytest.raises(GenerationFailed, match="nothing was stored"):
        chat(server)


def test_through_the_cli_a_bad_embedding_frame_skips_the_semantic_layer(hostile, isolated_env: Path) -> None:
    server = hostile(embed=lambda w, b: w.send(BAD_FRAMES["chunk-size"]))
    result = run_proc("ask", Q, env={"OLLAMA_HOST": server.url}, timeout=60)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "one two three\n"
    warning, status = result.stderr.strip().splitlines()
    assert warning.startswith("semcache: warning: embedding failed (") and "semantic layer skipped" in warning
    assert "malformed chunk size" in warning
    assert status.startswith("semcache: miss")
    (entry,) = stored(isolated_env)
    assert entry.embed_model is None and entry.dims is None  # stored, without a vector


def test_a_connection_closed_without_a_word_is_unreachable(hostile) -> None:
    server = hostile(embed=lambda w, b: None)  # accepts, reads the request, hangs up
    with pytest.raises(OllamaUnreachable, match="closed before any reply"):
        embed(server)


def test_a_plain_404_is_a_wrong_url_and_a_json_404_a_missing_model(hostile) -> None:
    page = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\n404 page not found"
    with pytest.raises(OllamaUnreachable, match="check the host, port and path in OLLAMA_HOST"):
        chat(hostile(chat=lambda w, b: w.send(page)))
    missing = json_reply(404, {"error": "model 'llama3.2' not found"}, "Not Found")
    with pytest.raises(ModelNotFound, match="ollama pull llama3.2"):
        chat(hostile(chat=lambda w, b: w.send(missing)))


# -- 9. framing values that are not plain numbers ----------------------------------------------

@pytest.mark.parametrize("size", [b"FFFFFFFFFFFFFFFF", b"-5", b"+5", b"0x5", b"5_0", b"5 junk", b"", b"\xef\xbc\x95"])
def test_a_chunk_size_that_is_not_a_hex_number_fails_cleanly(hostile, size: bytes) -> None:
    stream = STREAM_HEAD + line(token("one ")) + size + b"\r\n" + json.dumps(token("two")).encode() + b"\n\r\n"
    server = hostile(chat=lambda w, b: w.send(stream))
    seen: list[str] = []
    with pytest.raises(GenerationFailed, match="chunk size"):
        chat(server, seen=seen)
    assert seen == ["one "]


@pytest.mark.parametrize("length", ["\u00b2", "\u0665", "+2", "2_0", "0x2", "-2", "2 2", "1e3", "3, 4", ""])
def test_a_content_length_that_is_not_a_plain_number_fails_cleanly(hostile, length: str) -> None:
    reply = f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n{{}}".encode()
    server = hostile(embed=lambda w, b: w.send(reply))
    with pytest.raises(OllamaError, match="malformed Content-Length") as caught:
        embed(server)
    assert type(caught.value) is OllamaError


# -- 10. messages built from server text are one bounded line ------------------------------------

HTML_500 = ("<!DOCTYPE html>\n<html>\n<head><title>500 Internal Server Error</title></head>\n<body>\n"
            "<center><h1>500 Internal Server Error</h1></center>\n<hr><center>nginx</center>\n" + "<p>\n" * 2000
            + "</body>\n</html>\n")


@pytest.mark.parametrize(("reply", "expected"), [
    (f"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\nContent-Length: {len(HTML_500)}\r\n\r\n{HTML_500}",
     "failed: 500 Internal Server Error 500 Internal Server Error nginx (HTTP 500)"),
    ("HTTP/1.1 403 Forbidden\r\nContent-Length: 37\r\n\r\nforbidden\nby policy\r\n\tsee admin\x1b[2J!!",
     "refused the request: forbidden by policy see admin[2J!! (HTTP 403)"),
    ("HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\nContent-Length: 53\r\n\r\n"
     '{"error": "line one\\nline two\\u001b[31m\\u202e red"}   ', "failed: line one line two[31m red (HTTP 500)"),
])
def test_an_error_body_becomes_one_clean_line(hostile, reply: str, expected: str) -> None:
    server = hostile(chat=lambda w, b: w.send(reply.encode()))
    with pytest.raises(OllamaError) as caught:
        chat(server)
    assert expected in str(caught.value)
    assert str(caught.value).isprintable()


def test_a_huge_error_text_is_trimmed_with_an_ellipsis(hostile, isolated_env: Path, monkeypatch) -> None:
    text = "boom " * 20_000  # 100 KB, past the bytes read for a message too
    server = hostile(chat=lambda w, b: w.send(json_reply(500, {"error": text}, "Internal Server Error")))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    result = run_cli("ask", Q)
    assert result.exit_code == 1
    line_ = one_line_error(result.stderr)
    assert "boom boom" in line_ and "…" in line_ and len(line_) < 400


def test_a_mid_stream_error_with_newlines_is_one_line(hostile, isolated_env: Path, monkeypatch) -> None:
    server = hostile(chat=lambda w, b: w.answer(token("part "), {"error": "runner\ncrashed\r\n\x07 (exit 2)"}))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    result = run_cli("ask", Q)
    assert result.exit_code == 1 and result.stdout == "part "
    assert one_line_error(result.stderr) == ("semcache: error: Ollama failed mid-answer: runner crashed (exit 2); "
                                             "nothing was stored")
    assert entries(isolated_env) == 0
