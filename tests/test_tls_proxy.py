"""HTTPS against a real TLS server on loopback (the test server wrapped in TLS with a
certificate trustme makes, trusted through SSL_CERT_FILE), and HTTP proxies: a real
proxy on loopback written here, which tunnels CONNECT and forwards absolute-form
requests. Loopback hosts are never proxied, so the origin is a made-up name
(`ollama.test`) that only this proxy resolves, as real proxies resolve the names their
clients never do."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from conftest import REPO, run_cli, run_proc, stored
from fake_ollama import FakeOllama

from semcache_cli import http11


@pytest.fixture(autouse=True)
def _no_reference_bootstrap(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the requests that reach a proxy or a TLS server: a new cache's one-off embedding of the reference
    questions (tests/test_cold_start.py) would add a request and a status line to each."""
    monkeypatch.setenv("SEMCACHE_SCALE", "cosine")

Q = "is this answer private"
ANSWER = f"This is the answer to: {Q}\n"
PROXY_VARIABLES = [f"{name}_proxy" for name in ("http", "https", "all", "no")]


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own proxy settings never reach these tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("semcache: error: ")
    return lines[0]


# -- a CA, certificates and a TLS test server ----------------------------------------------

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def tls_server(ca: trustme.CA, *names: str) -> FakeOllama:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return FakeOllama().start(tls=context)


@pytest.fixture(scope="module")
def tls_ollama(ca: trustme.CA) -> Iterator[FakeOllama]:
    server = tls_server(ca, "ollama.test", "localhost", "127.0.0.1")
    yield server
    server.stop()


@pytest.fixture
def https(tls_ollama: FakeOllama) -> FakeOllama:
    tls_ollama.reset()
    return tls_ollama


def test_https_with_a_certificate_trusted_through_ssl_cert_file(https: FakeOllama, ca_file: Path,
                                                                isolated_env: Path) -> None:
    env = {"OLLAMA_HOST": f"https://localhost:{https.port}", "SSL_CERT_FILE": str(ca_file)}
    result = run_proc("ask", "-q", Q, env=env)
    assert (result.exit_code, result.stdout, result.stderr) == (0, ANSWER, "")
    assert https.counts["/api/chat"] == 1 and https.counts["/api/embed"] == 1
    assert https.connections == 1  # one TLS connection, kept alive from the embedding to the answer


def test_an_untrusted_certificate_is_one_line_exit_4(https: FakeOllama, isolated_env: Path,
                                                     tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))  # a CA that did not sign the server's certificate
    result = run_proc("ask", Q, env={"OLLAMA_HOST": f"https://localhost:{https.port}", "SSL_CERT_FILE": str(other)})
    assert result.exit_code == 4
    line = one_line_error(result.stderr)
    assert f"cannot reach Ollama at https://localhost:{https.port}" in line
    assert "TLS certificate failed verification (unable to get local issuer certificate)" in line
    assert "SSL_CERT_FILE" in line
    assert https.counts["/api/chat"] == 0
    assert stored(isolated_env) == []


def test_a_certificate_for_another_name_is_one_line_exit_4(ca: trustme.CA, ca_file: Path, isolated_env: Path) -> None:
    server = tls_server(ca, "elsewhere.example")
    try:
        result = run_proc("ask", Q, env={"OLLAMA_HOST": f"https://localhost:{server.port}",
                                         "SSL_CERT_FILE": str(ca_file)})
    finally:
        server.stop()
    assert result.exit_code == 4
    line = one_line_error(result.stderr)
    assert "TLS certificate failed verification (Hostname mismatch, certificate is not valid for 'localhost'.)" in line


def test_https_to_a_plain_http_server_is_one_line_exit_4(ollama: FakeOllama, isolated_env: Path) -> None:
    result = run_proc("ask", Q, env={"OLLAMA_HOST": ollama.url.replace("http://", "https://")})
    assert result.exit_code == 4
    assert "the TLS handshake failed" in one_line_error(result.stderr)


def test_a_tls_handshake_that_never_comes_is_bounded_by_the_connect_timeout(isolated_env: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never speaks TLS
    try:
        result = run_proc("ask", Q, "--timeout", "0.5s",
                          env={"OLLAMA_HOST": f"https://127.0.0.1:{listener.getsockname()[1]}"}, timeout=60)
    finally:
        listener.close()
    assert result.exit_code == 4 and "cannot reach Ollama" in one_line_error(result.stderr)


def imported_modules(*args: str, env: dict[str, str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "semcache_cli", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, **env}, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines() if line.startswith("import time:")}


def test_ssl_is_loaded_for_https_only(ollama: FakeOllama, https: FakeOllama, ca_file: Path, isolated_env: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh process per ask: ssl costs ~85 ms, http.client and email ~25 ms.
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")  # set, though loopback never uses it
    plain = imported_modules("ask", "-q", Q, env={"OLLAMA_HOST": ollama.url})
    assert "semcache_cli.http11" in plain
    assert not plain & {"ssl", "_ssl", "http.client", "email", "email.parser", "httpx"}
    tls = imported_modules("ask", "-q", "another question", env={"OLLAMA_HOST": f"https://localhost:{https.port}",
                                                                 "SSL_CERT_FILE": str(ca_file)})
    assert "ssl" in tls


# -- a real HTTP proxy on loopback -----------------------------------------------------------

class Proxy:
    """CONNECT tunnels and absolute-form forwarding, one thread per client connection.
    `names` is the proxy's own name table: (host, port) -> a loopback address."""

    def __init__(self, names: dict[tuple[str, int], tuple[str, int]], credentials: str | None = None) -> None:
        self.names = names
        self.credentials = credentials
        self.log: list[tuple[str, str, dict[str, str]]] = []  # (method, target, headers) of every request
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(30)
        with client, client.makefile("rb") as incoming:
            try:
                while self._one(client, incoming):
                    pass
            except OSError:  # either side hung up
                pass

    def _one(self, client: socket.socket, incoming: Any) -> bool:
        request_line = incoming.readline(65536).decode("latin-1")
        if not request_line:
            return False
        method, target, _ = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        while (raw := incoming.readline(65536)) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self.log.append((method, target, headers))
        body = incoming.read(int(headers.get("content-length", "0")))
        expected = "Basic " + base64.b64encode(self.credentials.encode()).decode() if self.credentials else None
        if expected and headers.get("proxy-authorization") != expected:
            client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\n"
                           b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            address = self.names.get((host.strip("[]"), int(port)))
        else:
            url = urlsplit(target)
            address = self.names.get((url.hostname or "", url.port or 80))
        if address is None:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\nConnection: close\r\n\r\nno such host")
            return False
        upstream = socket.create_connection(address, timeout=30)
        with upstream:
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                self._pipe(client, upstream)
                return False
            kept = [f"{k}: {v}" for k, v in headers.items() if not k.startswith("proxy-") and k != "connection"]
            head = "\r\n".join([f"{method} {url.path} HTTP/1.1", *kept, "Connection: close", "", ""])
            upstream.sendall(head.encode("latin-1") + body)
            while data := upstream.recv(65536):  # the reply frames itself: the client knows where it ends
                client.sendall(data)
        return True

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket) -> None:
        def forward(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        other = threading.Thread(target=forward, args=(upstream, client), daemon=True)
        other.start()
        forward(client, upstream)
        other.join(30)


@pytest.fixture
def proxy(ollama: FakeOllama, https: FakeOllama) -> Iterator[Proxy]:
    server = Proxy({("ollama.test", 11434): ("127.0.0.1", ollama.port),
                    ("ollama.test", 443): ("127.0.0.1", https.port)}, credentials="alice:s3cr@t:x")
    yield server
    server.close()


CREDENTIALS = "alice:s3cr%40t%3Ax@"  # the password "s3cr@t:x", percent-encoded in the URL
BASIC = "Basic " + base64.b64encode(b"alice:s3cr@t:x").decode()


def test_plain_http_goes_through_the_proxy_with_absolute_targets(ollama: FakeOllama, proxy: Proxy,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.test:11434")
    monkeypatch.setenv("HTTP_PROXY", proxy.url(CREDENTIALS))
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-for-ollama")
    result = run_cli("ask", "-q", Q)
    assert (result.exit_code, result.stdout, result.stderr) == (0, ANSWER, "")
    assert [(m, t) for m, t, _ in proxy.log] == [("POST", "http://ollama.test:11434/api/embed"),
                                                 ("POST", "http://ollama.test:11434/api/chat")]
    assert all(h["proxy-authorization"] == BASIC and h["host"] == "ollama.test:11434" for _, _, h in proxy.log)
    assert [path for _, path, _ in ollama.seen] == ["/api/embed", "/api/chat"]
    assert all(h["authorization"] == "Bearer sk-for-ollama" and "proxy-authorization" not in h for _, _, h in ollama.seen)


def test_https_goes_through_a_connect_tunnel_then_tls_to_the_origin(https: FakeOllama, proxy: Proxy, ca_file: Path,
                                                                   isolated_env: Path) -> None:
    env = {"OLLAMA_HOST": "https://ollama.test", "HTTPS_PROXY": proxy.url(CREDENTIALS), "SSL_CERT_FILE": str(ca_file)}
    result = run_proc("ask", "-q", Q, env=env)
    assert (result.exit_code, result.stdout, result.stderr) == (0, ANSWER, "")
    assert [(m, t, h.get("proxy-authorization")) for m, t, h in proxy.log] == [("CONNECT", "ollama.test:443", BASIC)]
    assert https.counts["/api/embed"] == 1 and https.counts["/api/chat"] == 1  # both through the one tunnel


def test_all_proxy_and_lower_case_variables_as_curl_reads_them(ollama: FakeOllama, proxy: Proxy,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.test:11434")
    monkeypatch.setenv("ALL_PROXY", proxy.url(CREDENTIALS))
    assert run_cli("ask", "-q", Q).stdout == ANSWER
    monkeypatch.setenv("http_proxy", proxy.url(CREDENTIALS))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing there: the lower-case one wins
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    assert run_cli("ask", "-q", "a second question").stdout == "This is the answer to: a second question\n"
    assert len(proxy.log) == 4


def test_no_proxy_sends_the_host_direct(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.test:11434")
    monkeypatch.setenv("HTTP_PROXY", proxy.url(CREDENTIALS))
    monkeypatch.setenv("NO_PROXY", "localhost, .test")
    result = run_cli("ask", Q)
    assert result.exit_code == 4  # direct: no resolver knows ollama.test
    line = one_line_error(result.stderr)
    assert "cannot reach Ollama at http://ollama.test:11434: is `ollama serve` running" in line
    assert proxy.log == []


def test_loopback_is_never_proxied(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for host in (ollama.url, f"http://localhost:{ollama.port}"):
        monkeypatch.setenv("OLLAMA_HOST", host)
        assert run_cli("ask", "-q", Q).stdout == ANSWER
    env = {"HTTP_PROXY": "http://p:1", "ALL_PROXY": "http://p:1"}  # and the rest of 127/8, as the choice itself
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST.", "::1", "::ffff:127.0.0.1"):
        assert http11.proxy_from_env("http", host, 80, env) is None


def test_a_proxy_that_refuses_the_credentials_is_exit_4_without_them(https: FakeOllama, proxy: Proxy, ca_file: Path,
                                                                     isolated_env: Path) -> None:
    env = {"OLLAMA_HOST": "https://ollama.test", "HTTPS_PROXY": proxy.url("alice:wrongpassword@"),
           "SSL_CERT_FILE": str(ca_file)}
    result = run_proc("ask", Q, env=env)
    assert result.exit_code == 4
    line = one_line_error(result.stderr)
    assert f"the proxy http://127.0.0.1:{proxy.port} answered HTTP 407 Proxy Authentication Required" in line
    assert "check the credentials in the proxy URL" in line
    assert "wrongpassword" not in result.stderr and "alice" not in result.stderr


def test_a_forwarding_proxy_that_refuses_the_credentials_is_exit_4(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.test:11434")
    monkeypatch.setenv("HTTP_PROXY", proxy.url())  # no credentials at all
    result = run_cli("ask", Q)
    assert result.exit_code == 4
    assert "the proxy answered HTTP 407 (check the credentials in the proxy URL)" in one_line_error(result.stderr)


def test_a_proxy_that_cannot_reach_the_host_is_exit_4(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "https://unknown.test")
    monkeypatch.setenv("HTTPS_PROXY", proxy.url(CREDENTIALS))
    result = run_cli("ask", Q)
    assert result.exit_code == 4
    assert "answered HTTP 502 Bad Gateway" in one_line_error(result.stderr)


def test_a_proxy_that_is_down_is_exit_4_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.test:11434")
    monkeypatch.setenv("HTTP_PROXY", "http://bob:hunter2@127.0.0.1:9")
    result = run_cli("ask", Q)
    assert result.exit_code == 4
    line = one_line_error(result.stderr)
    assert "cannot reach Ollama at http://ollama.test:11434 through the proxy http://127.0.0.1:9" in line
    assert "hunter2" not in line and "bob" not in line


@pytest.mark.parametrize(("value", "message"), [
    ("socks5://127.0.0.1:1080", "ALL_PROXY: socks5 proxies are not supported"),
    ("https://127.0.0.1:3128", "ALL_PROXY: https proxies are not supported"),
    ("http://127.0.0.1:99999", "ALL_PROXY: the proxy's port"),
    ("http://", "ALL_PROXY: not a proxy URL"),
])
def test_a_proxy_setting_that_cannot_be_used_is_exit_2(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.test:11434")
    monkeypatch.setenv("ALL_PROXY", value)
    result = run_cli("ask", Q)
    assert result.exit_code == 2 and message in one_line_error(result.stderr)


@pytest.mark.parametrize(("no_proxy", "host", "port", "bypass"), [
    ("*", "ollama.test", 11434, True),
    ("ollama.test", "ollama.test", 11434, True),
    ("ollama.test", "gpu.ollama.test", 11434, True),  # a name covers its subdomains
    ("ollama.test", "notollama.test", 11434, False),
    (".ollama.test", "ollama.test", 11434, True),  # a leading dot changes nothing, as in curl
    (".ollama.test", "gpu.ollama.test", 11434, True),
    ("*.ollama.test", "gpu.ollama.test", 11434, True),
    ("Ollama.Test.", "ollama.test", 80, True),
    ("ollama.test:11434", "ollama.test", 11434, True),
    ("ollama.test:8080", "ollama.test", 11434, False),
    ("example.com, ollama.test", "ollama.test", 1, True),
    ("example.com,,", "ollama.test", 1, False),
    ("10.1.2.3", "10.1.2.3", 1, True),
    ("10.1.2.3", "110.1.2.3", 1, False),  # addresses are never suffixes of each other
    ("10.0.0.0/8", "10.1.2.3", 1, True),
    ("10.0.0.0/8", "11.1.2.3", 1, False),
    ("[fd00::1]:11434", "fd00::1", 11434, True),
    ("fd00::/8", "fd00::1", 1, True),
    ("http://ollama.test", "ollama.test", 1, True),
    ("", "ollama.test", 1, False),
])
def test_no_proxy_matching(no_proxy: str, host: str, port: int, bypass: bool) -> None:
    assert http11.bypasses_proxy(host, port, no_proxy) is bypass


def test_which_variable_applies() -> None:
    pick = http11.proxy_from_env
    assert pick("http", "h.test", 80, {"HTTPS_PROXY": "http://p:1"}) is None  # the other scheme's proxy
    assert pick("https", "h.test", 443, {"HTTPS_PROXY": "p:3128"}).label == "http://p:3128"  # a bare host:port
    assert pick("https", "h.test", 443, {"https_proxy": "", "HTTPS_PROXY": "http://p:1"}) is None  # empty hides
    assert pick("https", "h.test", 443, {"https_proxy": "", "ALL_PROXY": "http://q:2"}).label == "http://q:2"
    assert pick("http", "h.test", 80, {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}) is None  # httpoxy
    proxy = pick("http", "h.test", 80, {"http_proxy": "http://u%20v:p%3Aw@p"})
    assert proxy is not None and (proxy.host, proxy.port) == ("p", 80)
    assert proxy.authorization == "Basic " + base64.b64encode(b"u v:p:w").decode()
    assert "p%3Aw" not in proxy.label and "u%20v" not in proxy.label
