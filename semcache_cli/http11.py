"""One HTTP/1.1 client connection over a socket, as much of the protocol as talking to
Ollama takes: POST a body, read the reply by Content-Length, chunked transfer coding or
to the end of the connection, whole or line by line as it streams, and keep the
connection for the next request. The standard library's http.client imports the email
package and ssl on every start (~25 ms measured, a sixth of a semantic ask).

Every failure is an OSError: the socket's own (TimeoutError for a timeout) or Broken,
for a reply that is not HTTP/1.x or ends before its body does.
"""

from __future__ import annotations

import socket

MAX_LINE = 65_536  # a status, header or chunk-size line longer than this is not HTTP


class Broken(OSError):
    """The reply broke HTTP/1.1 framing or ended early."""


class Connection:
    def __init__(self, host: str, port: int, https: bool, connect_timeout: float, read_timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            if https:
                import ssl  # loaded only for https: certificates cost ~85 ms

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(read_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._in = sock.makefile("rb")
        default_port = 443 if https else 80
        name = f"[{host}]" if ":" in host else host
        self._host = name if port == default_port else f"{name}:{port}"
        self.reusable = True  # until the server says close or a reply is left unread
        self.response: Response | None = None

    def close(self) -> None:
        self.reusable = False
        self._in.close()
        self._sock.close()

    def idle(self) -> bool:
        """Ready for another request: open, and the last reply read to its end."""
        return self.reusable and (self.response is None or self.response.done)

    def post(self, target: str, headers: dict[str, str], body: bytes) -> Response:
        """Send a POST and read the reply's status and headers."""
        lines = [f"POST {target} HTTP/1.1", f"Host: {self._host}", *(f"{k}: {v}" for k, v in headers.items()),
                 f"Content-Length: {len(body)}", "", ""]
        self._sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        while True:
            status, fields = self._head()
            if status >= 200:  # 1xx replies are interim: the real one follows
                self.response = Response(self, status, fields)
                return self.response

    def _head(self) -> tuple[int, dict[str, str]]:
        line = self._in.readline(MAX_LINE)
        if not line:  # closed without a word: a kept-alive connection the server let go
            raise ConnectionResetError("the server closed the connection before replying")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise Broken(f"not an HTTP/1.x reply: {line[:40]!r}")
        fields: dict[str, str] = {}
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                raise Broken(f"malformed header line: {line[:40]!r}")
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return int(parts[1]), fields

    def _line(self) -> bytes:
        line = self._in.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise Broken("the reply ended mid-line")
        return line


class Response:
    """A reply's status, headers and body; the body is read at most once."""

    def __init__(self, conn: Connection, status: int, fields: dict[str, str]) -> None:
        self.status = status
        self.fields = fields
        self._conn = conn
        self._in = conn._in
        no_body = status in (204, 304)  # whatever the headers say
        self._chunked = not no_body and "chunked" in fields.get("transfer-encoding", "").lower()
        length = "0" if no_body else fields.get("content-length")
        if not self._chunked and length is not None and not length.isdigit():
            raise Broken(f"malformed Content-Length: {length!r}")
        self._left = int(length) if not self._chunked and length is not None else None  # None: chunked or to the end
        self._chunk_left = 0
        self.done = self._left == 0
        if fields.get("connection", "").lower() == "close" or (not self._chunked and length is None):
            conn.reusable = False

    def read(self) -> bytes:
        """The rest of the body."""
        return b"".join(iter(self.readline, b""))

    def readline(self) -> bytes:
        """The next line of the body with its newline (the last may lack one), b"" at its end."""
        parts: list[bytes] = []
        while not self.done:
            piece = self._piece()
            if not piece:
                break
            parts.append(piece)
            if piece.endswith(b"\n"):
                break
        return b"".join(parts)

    def _piece(self) -> bytes:
        """Up to the next newline or the end of what the framing allows now."""
        if self._chunked:
            if self._chunk_left == 0 and not self._next_chunk():
                return b""
            piece = self._in.readline(self._chunk_left)
            if not piece:
                raise Broken("the reply ended mid-chunk")
            self._chunk_left -= len(piece)
            if self._chunk_left == 0 and self._in.read(2) != b"\r\n":
                raise Broken("a chunk did not end with CRLF")
            return piece
        if self._left is not None:
            piece = self._in.readline(self._left)
            if not piece:
                raise Broken("the reply ended before its Content-Length")
            self._left -= len(piece)
            self.done = self._left == 0
            return piece
        piece = self._in.readline()  # to the end of the connection
        self.done = not piece
        return piece

    def _next_chunk(self) -> bool:
        """Read a chunk-size line; False (and done) at the last, empty chunk."""
        size_text = self._conn._line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Broken(f"malformed chunk size: {size_text[:20]!r}") from None
        if size == 0:
            while self._conn._line() not in (b"\r\n", b"\n"):  # trailer fields, unused
                pass
            self.done = True
            return False
        self._chunk_left = size
        return True
