"""One HTTP/1.1 client connection over a socket, as much of the protocol as talking to
Ollama takes: send a request, read the reply by Content-Length, chunked transfer coding or
to the end of the connection, whole or line by line as it streams, and keep the
connection for the next request; through an HTTP proxy when one is given (absolute-form
targets for http, a CONNECT tunnel for https). The standard library's http.client imports
the email package and ssl on every start (~25 ms measured, a sixth of a semantic ask).

Everything a server sends is bounded and checked before use: every receive waits at most
until the connection's `deadline` (a time.monotonic() value the caller sets), so a server
that trickles a byte at a time cannot stretch a wait; the head of a reply, each line and
each body are bounded in bytes; framing values must be plain ASCII numbers.

Every failure is an OSError: the socket's own (TimeoutError once the deadline passes),
NoReply (the connection ended before the first byte of a reply), TLSFailure,
ProxyRefused, or Broken for a reply that is not HTTP/1.x, breaks its framing, passes a
bound (TooLarge) or ends early.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Mapping
from typing import NamedTuple, Protocol
from urllib.parse import quote, unquote, urljoin, urlsplit

MAX_HEAD_BYTES = 65_536  # status line and header fields of one reply
MAX_FIELDS = 100  # header fields of one reply (and trailer fields of a chunked one)
MAX_INTERIM = 10  # 1xx replies before the real one
MAX_CHUNK_LINE = 4_096  # a chunk-size line with its extensions
MAX_CHUNK_SIZE = 1 << 31  # real servers write chunks of kilobytes to megabytes
RECV_BYTES = 65_536
MAX_WAIT_S = 86_400.0  # one socket wait at most; a later deadline is reached by waiting again (time_t overflows)

# Characters of an HTTP token (a header name), for bytes.translate(None, ...).
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Broken(OSError):
    """The reply broke HTTP/1.1 framing or ended early."""


class TooLarge(Broken):
    """The reply passed one of the bounds on its size."""


class Truncated(Broken):
    """The connection ended before the reply did."""


class NoReply(ConnectionResetError):
    """The connection ended before the first byte of a reply (or while the request was
    being sent): on a kept-alive connection, the server let it go."""


class TLSFailure(OSError):
    """The TLS handshake failed; the message says why in a few words."""


class ProxyRefused(OSError):
    """The proxy answered CONNECT with something other than 2xx."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status


class Proxy(NamedTuple):
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization value, from credentials in the proxy URL
    label: str  # scheme://host:port, never the credentials: for messages


def authority(host: str, port: int, default_port: int) -> str:
    """host[:port] as the Host header and CONNECT write it; IPv6 literals in brackets."""
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"


def _wait(deadline: float) -> float:
    """The socket timeout that ends a wait at the deadline: TimeoutError if it has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the deadline passed")
    return min(remaining, MAX_WAIT_S)


def connect(host: str, port: int, deadline: float) -> socket.socket:
    """A TCP connection to one of host's addresses, all tried within the deadline (name
    resolution itself is bounded only by the system resolver's own timeouts)."""
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        timeout = _wait(deadline)
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _Reader:
    """Buffered receiving on a socket where every recv waits only until `deadline`."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.deadline = deadline

    def buffered(self) -> int:
        return len(self._buf)

    def _fill(self) -> bool:
        """One recv into the buffer; False at the end of the connection."""
        while True:
            self._sock.settimeout(_wait(self.deadline))
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                if time.monotonic() < self.deadline:  # a wait of MAX_WAIT_S ended before the deadline
                    continue
                raise
            self._buf += data
            return bool(data)

    def _take(self, n: int) -> bytes:
        piece = bytes(self._buf[:n])
        del self._buf[:n]  # bytearray drops a prefix in O(1)
        return piece

    def line(self, limit: int) -> bytes:
        """Through the next newline, at most `limit` bytes: shorter without a newline only
        at the end of the connection, exactly `limit` without one when the line is longer."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buf) >= limit:
                return self._take(limit)
            start = len(self._buf)
            if not self._fill():
                return self._take(len(self._buf))

    def some(self, n: int, newline: bool) -> bytes:
        """1 to n bytes, those already here when there are any (through the first newline
        when `newline`); b"" at the end of the connection."""
        if not self._buf and not self._fill():
            return b""
        if newline:
            end = self._buf.find(b"\n", 0, n)
            if end >= 0:
                n = end + 1
        return self._take(n)


def _status_line(line: bytes) -> tuple[int, str]:
    if not line.endswith(b"\n"):
        raise TooLarge("a status line too long") if len(line) == MAX_HEAD_BYTES else Truncated("the reply ended mid-line")
    version, _, rest = line.rstrip(b"\r\n").partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() or code[:1] == b"0":
        raise Broken(f"not an HTTP/1.x reply: {line[:40]!r}")
    return int(code), reason.decode("latin-1").strip()


def _fields(reader: _Reader, budget: int) -> dict[str, str]:
    """Header (or trailer) fields up to the blank line, names lower-cased; a repeated field's
    values joined with commas, as RFC 9110 allows for lists."""
    fields: dict[str, str] = {}
    for _ in range(MAX_FIELDS + 1):
        line = reader.line(budget)
        if line in (b"\r\n", b"\n"):
            return fields
        if not line.endswith(b"\n"):
            raise TooLarge(f"a reply head longer than {MAX_HEAD_BYTES} bytes") if len(line) == budget \
                else Truncated("the reply ended inside its head")
        budget -= len(line)
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN):  # empty, spaced or folded name
            raise Broken(f"malformed header line: {line[:40]!r}")
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    raise TooLarge(f"a reply head with more than {MAX_FIELDS} fields")


def _content_length(fields: dict[str, str]) -> int | None:
    value = fields.get("content-length")
    if value is None:
        return None
    values = {v.strip() for v in value.split(",")}  # a repeated identical value is allowed
    text = values.pop()
    # isdigit() alone accepts '²' and other Unicode digits; int() accepts '+1', '1_0' and spaces.
    if values or not text.isascii() or not text.isdigit() or len(text) > 18:
        raise Broken(f"malformed Content-Length: {value[:40]!r}")
    return int(text)


class Connection:
    def __init__(self, host: str, port: int, https: bool, deadline: float, proxy: Proxy | None = None) -> None:
        """Connected (through the proxy when given), and for https the TLS handshake done,
        all within the deadline."""
        self._authority = authority(host, port, 443 if https else 80)
        self._tunnel_target = authority(host, port, 0)  # CONNECT always names the port
        self._proxy = proxy
        self._forward = proxy is not None and not https  # plain http through a proxy: absolute-form targets
        sock = connect(proxy.host, proxy.port, deadline) if proxy else connect(host, port, deadline)
        try:
            if https and proxy is not None:
                self._tunnel(sock, deadline)
            if https:
                sock = _tls(sock, host, deadline)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = _Reader(sock, deadline)
        self.reusable = True  # until the server says close or a reply is left unread
        self.response: Response | None = None

    def _tunnel(self, sock: socket.socket, deadline: float) -> None:
        """CONNECT through the proxy; on a 2xx the socket carries bytes to the origin."""
        assert self._proxy is not None
        lines = [f"CONNECT {self._tunnel_target} HTTP/1.1", f"Host: {self._tunnel_target}"]
        if self._proxy.authorization:
            lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        sock.settimeout(_wait(deadline))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reader = _Reader(sock, deadline)
        status, reason, _ = _head(reader)
        if not 200 <= status < 300:
            raise ProxyRefused(status, reason[:80])
        if reader.buffered():  # the origin cannot have spoken before the TLS hello
            raise Broken("the proxy sent bytes after its CONNECT reply")

    @property
    def deadline(self) -> float:
        return self._reader.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._reader.deadline = value

    def close(self) -> None:
        self.reusable = False
        self._sock.close()

    def idle(self) -> bool:
        """Ready for another request: open, and the last reply read to its end."""
        return self.reusable and (self.response is None or self.response.done)

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None, deadline: float) -> Response:
        """Send a request and read the reply's status and headers, all by the deadline."""
        if self._forward:
            target = f"http://{self._authority}{target}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._authority}", *(f"{k}: {v}" for k, v in headers.items())]
        if self._forward and self._proxy and self._proxy.authorization:
            lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        if not all(line.isprintable() for line in lines):  # CR, LF or NUL would split or forge fields
            raise ValueError("a control character in the request head")
        head = "\r\n".join(lines)
        self.deadline = deadline
        try:
            self._sock.settimeout(_wait(deadline))
            self._sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + (body or b""))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise NoReply(f"the connection closed while sending: {exc}") from None
        for _ in range(MAX_INTERIM + 1):
            status, _reason, fields = _head(self._reader)
            if status == 101:
                raise Broken("the server switched protocols unasked")
            if status >= 200:  # 1xx replies are interim: the real one follows
                self.response = Response(self, status, fields)
                return self.response
        raise Broken(f"more than {MAX_INTERIM} interim (1xx) replies")


def _head(reader: _Reader) -> tuple[int, str, dict[str, str]]:
    try:
        line = reader.line(MAX_HEAD_BYTES)
    except ConnectionResetError as exc:
        if reader.buffered():
            raise
        raise NoReply(f"the connection was reset before a reply: {exc}") from None
    if not line:
        raise NoReply("the server closed the connection before replying")
    status, reason = _status_line(line)
    return status, reason, _fields(reader, MAX_HEAD_BYTES - len(line))


def _tls(sock: socket.socket, host: str, deadline: float) -> socket.socket:
    import ssl  # only for https: loading certificates costs ~85 ms

    context = ssl.create_default_context()  # system CAs, and SSL_CERT_FILE / SSL_CERT_DIR when set
    # CPython bounds the whole handshake by the socket timeout, not each wait in it.
    sock.settimeout(_wait(deadline))
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise TLSFailure(f"its TLS certificate failed verification ({exc.verify_message})") from None
    except ssl.SSLError as exc:
        raise TLSFailure(f"the TLS handshake failed ({exc.reason or exc})") from None


class Response:
    """A reply's status, headers and body; the body is read at most once."""

    def __init__(self, conn: Connection, status: int, fields: dict[str, str]) -> None:
        self.status = status
        self.fields = fields
        self._conn = conn
        self._reader = conn._reader
        no_body = status in (204, 304)  # whatever the headers say
        coding = fields.get("transfer-encoding", "").strip().lower()
        if coding and coding != "chunked" and not no_body:
            raise Broken(f"unsupported Transfer-Encoding: {coding[:40]!r}")  # gzip and the like, never asked for
        self._chunked = coding == "chunked" and not no_body
        self._left = 0 if no_body else None if self._chunked else _content_length(fields)  # None: chunked or to the end
        self._chunk_left = 0
        self.done = False
        if fields.get("connection", "").strip().lower() == "close" or (not self._chunked and self._left is None):
            conn.reusable = False
        if self._left == 0:
            self._finish()

    @property
    def deadline(self) -> float:
        return self._reader.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._reader.deadline = value

    @property
    def length(self) -> int | None:
        """The Content-Length, when the reply has one."""
        return None if self._chunked else self._left

    def _finish(self) -> None:
        self.done = True
        if self._reader.buffered():  # bytes beyond the reply: the next one would start in garbage
            self._conn.reusable = False

    def read(self, limit: int, truncate: bool = False) -> bytes:
        """The rest of the body, at most `limit` bytes: TooLarge past it, or with
        `truncate` the first `limit` bytes (and the connection is not reused)."""
        if self._left is not None and self._left > limit and not truncate:
            raise TooLarge(f"a reply of {self._left} bytes, more than the {limit} allowed")
        out = bytearray()
        while piece := self._piece(limit + 1 - len(out), newline=False):
            out += piece
            if len(out) > limit:
                if not truncate:
                    raise TooLarge(f"a reply longer than the {limit} bytes allowed")
                self._conn.reusable = False
                return bytes(out[:limit])
        return bytes(out)

    def some(self, n: int) -> bytes:
        """The next 1 to n bytes of the body, as soon as they come; b"" at its end."""
        return self._piece(n, newline=False)

    def readline(self, limit: int) -> bytes:
        """The next line of the body with its newline (the last may lack one), b"" at its
        end; TooLarge for a line longer than `limit` bytes."""
        out = bytearray()
        while len(out) < limit:
            piece = self._piece(limit - len(out), newline=True)
            if not piece:
                return bytes(out)
            out += piece
            if piece.endswith(b"\n"):
                return bytes(out)
        raise TooLarge(f"a line longer than {limit} bytes")

    def _piece(self, n: int, newline: bool) -> bytes:
        """1 to n bytes of the body from what the framing allows now; b"" at its end."""
        if self.done:
            return b""
        if self._chunked:
            if self._chunk_left == 0 and not self._next_chunk():
                return b""
            piece = self._reader.some(min(n, self._chunk_left), newline)
            if not piece:
                raise Truncated("the reply ended mid-chunk")
            self._chunk_left -= len(piece)
            if self._chunk_left == 0:
                end = self._reader.line(2)
                if end not in (b"\r\n", b"\n"):
                    raise Broken("a chunk did not end with CRLF") if end else Truncated("the reply ended after a chunk")
            return piece
        if self._left is not None:
            piece = self._reader.some(min(n, self._left), newline)
            if not piece:
                raise Truncated("the reply ended before its Content-Length")
            self._left -= len(piece)
            if self._left == 0:
                self._finish()
            return piece
        piece = self._reader.some(n, newline)  # to the end of the connection
        if not piece:
            self._finish()
        return piece

    def _next_chunk(self) -> bool:
        """Read a chunk-size line; False (and done) at the last, empty chunk."""
        line = self._reader.line(MAX_CHUNK_LINE)
        if not line.endswith(b"\n"):
            raise Broken("a chunk-size line too long") if len(line) == MAX_CHUNK_LINE else Truncated("the reply ended mid-body")
        size_text = line.split(b";", 1)[0].strip()
        # int(x, 16) alone accepts '-5', '+5', '0x5' and '5_0'.
        if not size_text or size_text.translate(None, b"0123456789abcdefABCDEF") or len(size_text) > 16:
            raise Broken(f"malformed chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        if size > MAX_CHUNK_SIZE:
            raise Broken(f"a chunk size of {size} bytes")
        if size == 0:
            _fields(self._reader, MAX_HEAD_BYTES)  # trailer fields, bounded and unused
            self._finish()
            return False
        self._chunk_left = size
        return True


# -- which proxy, from the environment -----------------------------------------------------


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (also as ::ffff:127.x): never reached through a proxy."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _variable(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(value, variable name) of a proxy variable: the lower-case form first, as curl and
    httpx read them; a set but empty lower-case one hides the upper-case one."""
    lower, upper = name.lower(), name.upper()
    if lower in env:
        return (env[lower], lower) if env[lower].strip() else None
    # Under CGI, HTTP_PROXY can come from a client's "Proxy:" header (httpoxy): not trusted.
    if upper in env and env[upper].strip() and not (upper == "HTTP_PROXY" and "REQUEST_METHOD" in env):
        return env[upper], upper
    return None


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """NO_PROXY as curl and httpx read it: `*`; a name, which covers its subdomains too
    (a leading dot or `*.` changes nothing); an IP address or CIDR block; any of them with
    `:port` to cover that port only."""
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower().partition("://")[2] or raw.strip().lower()
        if entry == "*":
            return True
        if entry.startswith("["):
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            name, entry_port = entry.split(":")
        else:
            name, entry_port = entry, ""
        name = name.lstrip("*.").rstrip(".")
        if not name or (entry_port and entry_port != str(port)):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
        elif host == name or host.endswith("." + name):
            return True
    return False


def parse_proxy(value: str, variable: str) -> Proxy:
    """An http:// proxy URL (a bare host:port means http), with optional user:password.
    Errors name the variable, never its value: it may hold a password."""
    text = value.strip()
    split = urlsplit(text if "://" in text else f"http://{text}")
    if split.scheme.lower() != "http":
        raise ValueError(f"{variable}: {split.scheme or 'this'} proxies are not supported "
                         "(use an http:// proxy, or name the host in NO_PROXY)")
    try:
        port = split.port or 80
    except ValueError:
        raise ValueError(f"{variable}: the proxy's port is not a number from 1 to 65535") from None
    host = split.hostname
    if not host or not text.isprintable() or " " in text or port == 0:
        raise ValueError(f"{variable}: not a proxy URL (use http://host:port)")
    authorization = None
    if split.username is not None or split.password is not None:
        import binascii

        credentials = f"{unquote(split.username or '')}:{unquote(split.password or '')}".encode()
        authorization = "Basic " + binascii.b2a_base64(credentials, newline=False).decode("ascii")
    return Proxy(host, port, authorization, f"http://{authority(host, port, 0)}")


def proxy_from_env(scheme: str, host: str, port: int, env: Mapping[str, str]) -> Proxy | None:
    """The proxy for an origin: {scheme}_proxy, else all_proxy, unless the host is loopback
    or NO_PROXY covers it. ValueError for a proxy URL that cannot be used."""
    if is_loopback(host):
        return None
    no_proxy = _variable(env, "no_proxy")
    if no_proxy is not None and bypasses_proxy(host, port, no_proxy[0]):
        return None
    for name in (f"{scheme}_proxy", "all_proxy"):
        found = _variable(env, name)
        if found is not None:
            return parse_proxy(*found)
    return None


# -- a client: where to connect, which proxy, one kept-alive connection, redirects ------


REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
MAX_REDIRECT_BODY = 65_536  # a redirect's body is read only so the connection can be reused
GRACE_S = 1.0  # for the rest of a body once what matters is known


class Origin(NamedTuple):
    scheme: str
    host: str  # IPv6 without brackets
    port: int

    def url(self) -> str:
        return f"{self.scheme}://{authority(self.host, self.port, 0)}"


def origin_of(url: str) -> Origin:
    split = urlsplit(url)
    https = split.scheme == "https"
    return Origin(split.scheme, split.hostname or "127.0.0.1", split.port or (443 if https else 80))


class Transport(Protocol):
    """How a Client opens a connection: the seam a test swaps to count or shape them."""

    def connect(self, origin: Origin, deadline: float, proxy: Proxy | None) -> Connection: ...


class SocketTransport:
    def connect(self, origin: Origin, deadline: float, proxy: Proxy | None) -> Connection:
        return Connection(origin.host, origin.port, origin.scheme == "https", deadline, proxy)


class ConnectFailed(OSError):
    """No connection to `origin` (through `proxy`, when there is one), or it closed before
    any reply; `cause` is the error underneath (TimeoutError, TLSFailure, ProxyRefused,
    NoReply or the socket's own)."""

    def __init__(self, origin: Origin, proxy: Proxy | None, cause: OSError) -> None:
        super().__init__(str(cause))
        self.origin, self.proxy, self.cause = origin, proxy, cause


class RedirectFailed(Broken):
    """A redirect that cannot be followed; the message says why."""


class Client:
    """Requests to one home URL over one kept-alive connection (a client belongs to one
    thread). Picks each origin's proxy from the environment (ValueError at once for a
    proxy setting that cannot be used), reopens a kept-alive connection the server let go,
    follows redirects, and sends `home_headers` (credentials) only to the home origin."""

    def __init__(self, base_url: str, headers: Mapping[str, str], home_headers: Mapping[str, str],
                 env: Mapping[str, str], connect_timeout: float, transport: Transport | None = None) -> None:
        self.home = origin_of(base_url)
        self.prefix = urlsplit(base_url).path.rstrip("/")
        self._headers = dict(headers)
        self._home_headers = {**self._headers, **home_headers}
        self._env = env
        self._connect_timeout = connect_timeout
        self._transport = transport or SocketTransport()
        self._proxies: dict[Origin, Proxy | None] = {}
        self.proxy(self.home)
        self._conn: Connection | None = None
        self._conn_origin: Origin | None = None

    def proxy(self, origin: Origin) -> Proxy | None:
        if origin not in self._proxies:
            self._proxies[origin] = proxy_from_env(origin.scheme, origin.host, origin.port, self._env)
        return self._proxies[origin]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def keep_or_close(self) -> None:
        """After a reply was read as far as wanted: a connection with unread bytes is closed."""
        if self._conn is not None and not self._conn.idle():
            self.close()

    def _idle_to(self, origin: Origin) -> bool:
        return self._conn is not None and self._conn_origin == origin and self._conn.idle()

    def _connection(self, origin: Origin, deadline: float) -> Connection:
        if self._idle_to(origin):
            assert self._conn is not None
            return self._conn
        self.close()
        proxy = self.proxy(origin)
        try:
            self._conn = self._transport.connect(origin, min(deadline, time.monotonic() + self._connect_timeout), proxy)
        except OSError as exc:
            raise ConnectFailed(origin, proxy, exc) from None
        self._conn_origin = origin
        return self._conn

    def _send(self, origin: Origin, method: str, target: str, body: bytes | None, deadline: float) -> Response:
        """One request and its reply's head. A kept-alive connection the server let go
        meanwhile is reopened once: the request never got there."""
        headers = self._home_headers if origin == self.home else self._headers
        for retry in (False, True):
            reused = self._idle_to(origin)
            conn = self._connection(origin, deadline)
            try:
                return conn.request(method, target, headers, body, deadline)
            except NoReply as exc:
                self.close()
                if reused and not retry:
                    continue
                raise ConnectFailed(origin, self.proxy(origin), exc) from None
            except OSError:
                self.close()
                raise
        raise AssertionError("unreachable")  # the second try returns or raises

    def request(self, method: str, path: str, body: bytes | None, deadline: float) -> Response:
        """`method` on the home URL's path + `path`, following redirects: 301, 302, 307 and
        308 repeat the request with its body (Ollama's API is POST-only: a GET is of no use
        to it; curl's --post301/302), 303 turns it into a GET as it means."""
        origin, target = self.home, quote(self.prefix + path, safe="/%:@!$&'()*+,;=-._~")
        for hop in range(MAX_REDIRECTS + 1):
            response = self._send(origin, method, target, body, deadline)
            location = response.fields.get("location")
            if response.status not in REDIRECTS or location is None:
                return response
            self._discard(response)
            if hop == MAX_REDIRECTS:
                shown = "".join(ch for ch in location if ch.isprintable())[:80]
                raise RedirectFailed(f"redirected more than {MAX_REDIRECTS} times (last to {shown})")
            origin, target = _redirect_target(origin, target, location)
            if response.status == 303:
                method, body = "GET", None
        raise AssertionError("unreachable")  # the last hop returns or raises

    def _discard(self, response: Response) -> None:
        """Read a redirect's small body so the connection can be reused; close it otherwise."""
        response.deadline = min(response.deadline, time.monotonic() + GRACE_S)
        try:
            response.read(MAX_REDIRECT_BODY, truncate=True)
        except OSError:
            self.close()
        self.keep_or_close()


def _redirect_target(origin: Origin, target: str, location: str) -> tuple[Origin, str]:
    if not location.isascii() or not location.isprintable() or " " in location.strip():
        raise RedirectFailed("redirected to a malformed Location")
    try:
        url = urlsplit(urljoin(f"{origin.url()}{target}", location.strip()))
        port = url.port
    except ValueError:  # a bad port or IPv6 bracket
        url, port = urlsplit(""), 0
    if url.scheme not in ("http", "https") or not url.hostname or port == 0:
        raise RedirectFailed(f"redirected to {location.strip()[:80]}, which is not an http(s) URL that can be followed")
    new = Origin(url.scheme, url.hostname, port or (443 if url.scheme == "https" else 80))
    return new, (url.path or "/") + (f"?{url.query}" if url.query else "")
