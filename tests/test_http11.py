"""semcache's HTTP/1.1 connection against a raw socket server that sends exactly the
bytes each test scripts: framing, keep-alive and every way a reply can break."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from semcache_cli.http11 import Broken, Connection, TooLarge


class RawServer:
    """Answers each request on a connection with the next scripted bytes. None closes the
    connection: in place of an answer, or right after the answer before it."""

    def __init__(self, script: list[bytes | None]) -> None:
        self.script = list(script)
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.script:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as incoming:
                while self.script:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = incoming.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
                    self.requests.append(head + incoming.read(length))
                    answer = self.script.pop(0)
                    if answer is None:
                        break
                    conn.sendall(answer)
                    if self.script and self.script[0] is None:  # close right after this answer
                        self.script.pop(0)
                        break

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def serve() -> Iterator:
    opened: list[tuple[RawServer, Connection]] = []

    def start(*script: bytes | None) -> tuple[RawServer, Connection]:
        server = RawServer(list(script))
        opened.append((server, Connection("127.0.0.1", server.port, False, time.monotonic() + 5.0)))
        return opened[-1]

    yield start
    for server, conn in opened:
        conn.close()
        server.close()


LIMIT = 1 << 20


def post(conn: Connection, body: bytes = b'{"x": 1}'):
    return conn.request("POST", "/api/chat", {"Content-Type": "application/json"}, body, time.monotonic() + 5.0)


def test_a_chunked_stream_is_read_line_by_line_across_chunk_boundaries(serve) -> None:
    stream = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"6;ext=1\r\n{\"a\":1\r\n"  # a line split over two chunks, a chunk extension
              b"f\r\n}\n{\"b\":2}\n{\"c\":\r\n"  # the end of one line, a whole one, the start of a third
              b"3\r\n3}\n\r\n"
              b"0\r\nTrailer: x\r\n\r\n")
    server, conn = serve(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    reply = post(conn)
    assert (reply.status, reply.fields["content-type"]) == (200, "application/x-ndjson")
    assert [reply.readline(LIMIT) for _ in range(4)] == [b'{"a":1}\n', b'{"b":2}\n', b'{"c":3}\n', b""]
    assert reply.done and conn.idle()
    assert post(conn).read(LIMIT) == b"ok"  # the same connection, kept alive
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 8\r\n" in server.requests[0] and server.requests[0].endswith(b'{"x": 1}')


def test_content_length_close_and_read_to_the_end(serve) -> None:
    _, conn = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 18\r\nConnection: close\r\n\r\n404 page not found")
    reply = post(conn)
    assert (reply.status, reply.read(LIMIT)) == (404, b"404 page not found")
    assert not conn.idle()  # the server said close
    _, conn = serve(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", None)
    assert post(conn).read(LIMIT) == b"until the end" and not conn.idle()


def test_a_reply_without_a_body_is_done_at_once(serve) -> None:
    server, conn = serve(b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert post(conn).read(LIMIT) == b"" and conn.idle()
    assert (post(conn).status, server.connections) == (200, 1)


def test_interim_replies_are_skipped(serve) -> None:
    _, conn = serve(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    reply = post(conn)
    assert (reply.status, reply.read(LIMIT)) == (503, b"busy")


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n{\"cut\": ",  # ends mid-chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n",  # not a chunk size
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",  # no CRLF after the chunk
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # shorter than its length
])
def test_a_body_cut_short_or_malformed_is_broken(serve, answer: bytes) -> None:
    _, conn = serve(answer, None)
    reply = post(conn)
    with pytest.raises(Broken):
        reply.read(LIMIT)


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"])
def test_a_reply_that_is_not_http_is_broken(serve, answer: bytes) -> None:
    _, conn = serve(answer, None)
    with pytest.raises(Broken):
        post(conn)


def test_a_connection_closed_before_the_reply_says_so(serve) -> None:
    _, conn = serve(None)
    with pytest.raises(ConnectionResetError):
        post(conn)


@pytest.mark.parametrize("length", [b"\xc2\xb2", b"\xd9\xa5", b"+2", b"2_0", b"0x2", b"-2", b"2 2", b"", b"1, 2",
                                    b"9" * 40])
def test_a_content_length_that_is_not_plain_ascii_digits_is_broken(serve, length: bytes) -> None:
    _, conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nok", None)
    with pytest.raises(Broken, match="malformed Content-Length"):
        post(conn)


def test_a_repeated_identical_content_length_is_fine(serve) -> None:
    _, conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
    assert post(conn).read(LIMIT) == b"ok"


@pytest.mark.parametrize("size", [b"FFFFFFFFFFFFFFFF", b"FFFFFFFFFFFFFFFFF", b"-5", b"+5", b"0x5", b"5_0", b"5 junk",
                                  b"", b"\xef\xbc\x95", b" "])
def test_a_chunk_size_that_is_not_a_hex_number_is_broken(serve, size: bytes) -> None:
    _, conn = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello\r\n0\r\n\r\n", None)
    reply = post(conn)
    with pytest.raises(Broken, match="chunk size"):
        reply.read(LIMIT)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",  # a coding never asked for
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" * 11 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
])
def test_heads_that_break_the_protocol_are_broken(serve, answer: bytes) -> None:
    _, conn = serve(answer, None)
    with pytest.raises(Broken):
        post(conn)


def test_the_head_is_bounded_in_fields_and_bytes(serve) -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    _, conn = serve(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n", None)
    with pytest.raises(TooLarge, match="more than 100 fields"):
        post(conn)
    _, conn = serve(b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n", None)
    with pytest.raises(TooLarge, match="head longer than 65536 bytes"):
        post(conn)
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))  # each line fine, 60 KB in all
    _, conn = serve(b"HTTP/1.1 200 OK\r\n" + fields + b"X-Last: " + b"v" * 8000 + b"\r\n\r\n", None)
    with pytest.raises(TooLarge, match="head longer than"):
        post(conn)


def test_bodies_and_lines_are_bounded(serve) -> None:
    _, conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, None)
    with pytest.raises(TooLarge, match="100 bytes, more than the 10 allowed"):
        post(conn).read(10)
    _, conn = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"5\r\nxxxxx\r\n" * 5 + b"0\r\n\r\n", None)
    with pytest.raises(TooLarge, match="longer than the 12 bytes"):
        post(conn).read(12)
    _, conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, None)
    reply = post(conn)
    assert reply.read(10, truncate=True) == b"x" * 10 and not conn.idle()  # the rest is never read as a next reply
    _, conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"0123456789\nabcdefghi\n", None)
    reply = post(conn)
    assert reply.readline(11) == b"0123456789\n"
    with pytest.raises(TooLarge, match="line longer than 5 bytes"):
        reply.readline(5)


def test_bytes_beyond_the_reply_mean_the_connection_is_not_reused(serve) -> None:
    _, conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nsmuggled")
    assert post(conn).read(LIMIT) == b"ok"
    assert not conn.idle()


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"HTTP/1.1 200 OK\r\n", b""])
def test_every_wait_ends_at_the_deadline(answer: bytes) -> None:
    """A server that sends part of a reply and then nothing, keeping the connection open."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve_part() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)
            done.wait(30)

    threading.Thread(target=serve_part, daemon=True).start()
    conn = Connection("127.0.0.1", listener.getsockname()[1], False, time.monotonic() + 5)
    try:
        with pytest.raises(TimeoutError):
            conn.request("POST", "/api/chat", {}, b"{}", time.monotonic() + 0.3).read(LIMIT)
    finally:
        done.set()
        conn.close()
        listener.close()


def test_a_control_character_never_reaches_the_request_head(serve) -> None:
    server, conn = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    for headers, target in (({"Authorization": "Bearer x\r\nX-Injected: 1"}, "/api/chat"),
                            ({}, "/api/chat HTTP/1.1\r\nX-Injected: 1\r\n\r\nPOST /x"), ({"X": "a\x00b"}, "/")):
        with pytest.raises(ValueError, match="control character"):
            conn.request("POST", target, headers, b"{}", time.monotonic() + 5)
    assert server.requests == []
