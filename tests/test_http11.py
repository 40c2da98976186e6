"""semcache's HTTP/1.1 connection against a raw socket server that sends exactly the
bytes each test scripts: framing, keep-alive and every way a reply can break."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from semcache_cli.http11 import Broken, Connection


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
        opened.append((server, Connection("127.0.0.1", server.port, False, 5.0, 5.0)))
        return opened[-1]

    yield start
    for server, conn in opened:
        conn.close()
        server.close()


def post(conn: Connection, body: bytes = b'{"x": 1}'):
    return conn.post("/api/chat", {"Content-Type": "application/json"}, body)


def test_a_chunked_stream_is_read_line_by_line_across_chunk_boundaries(serve) -> None:
    stream = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"6;ext=1\r\n{\"a\":1\r\n"  # a line split over two chunks, a chunk extension
              b"f\r\n}\n{\"b\":2}\n{\"c\":\r\n"  # the end of one line, a whole one, the start of a third
              b"3\r\n3}\n\r\n"
              b"0\r\nTrailer: x\r\n\r\n")
    server, conn = serve(stream, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    reply = post(conn)
    assert (reply.status, reply.fields["content-type"]) == (200, "application/x-ndjson")
    assert [reply.readline() for _ in range(4)] == [b'{"a":1}\n', b'{"b":2}\n', b'{"c":3}\n', b""]
    assert reply.done and conn.idle()
    assert post(conn).read() == b"ok"  # the same connection, kept alive
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 8\r\n" in server.requests[0] and server.requests[0].endswith(b'{"x": 1}')


def test_content_length_close_and_read_to_the_end(serve) -> None:
    _, conn = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 18\r\nConnection: close\r\n\r\n404 page not found")
    reply = post(conn)
    assert (reply.status, reply.read()) == (404, b"404 page not found")
    assert not conn.idle()  # the server said close
    _, conn = serve(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", None)
    assert post(conn).read() == b"until the end" and not conn.idle()


def test_a_reply_without_a_body_is_done_at_once(serve) -> None:
    server, conn = serve(b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert post(conn).read() == b"" and conn.idle()
    assert (post(conn).status, server.connections) == (200, 1)


def test_interim_replies_are_skipped(serve) -> None:
    _, conn = serve(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
    reply = post(conn)
    assert (reply.status, reply.read()) == (503, b"busy")


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
        reply.read()


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"])
def test_a_reply_that_is_not_http_is_broken(serve, answer: bytes) -> None:
    _, conn = serve(answer, None)
    with pytest.raises(Broken):
        post(conn)


def test_a_connection_closed_before_the_reply_says_so(serve) -> None:
    _, conn = serve(None)
    with pytest.raises(ConnectionResetError):
        post(conn)
