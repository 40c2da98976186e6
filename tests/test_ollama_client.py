"""semcache's HTTP client against the test server: embeddings, streaming, error mapping."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fake_ollama import FakeOllama

from semcache_cli import http11
from semcache_cli.errors import GenerationFailed, ModelNotFound, OllamaError, OllamaUnreachable
from semcache_cli.ollama import EmbedInputTooLong, OllamaClient

USER = [{"role": "user", "content": "one two three four"}]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(ollama: FakeOllama, sleeps: list[float]) -> Iterator[OllamaClient]:
    c = OllamaClient(ollama.url, timeout=5.0, sleep=sleeps.append)
    yield c
    c.close()


def test_embed_batches_through_api_embed(client: OllamaClient, ollama: FakeOllama) -> None:
    vectors = client.embed("nomic-embed-text", ["a", "b", "c"])
    assert [len(v) for v in vectors] == [768] * 3
    assert ollama.counts["/api/embed"] == 1


def test_legacy_server_falls_back_to_api_embeddings(client: OllamaClient, ollama: FakeOllama) -> None:
    ollama.faults.legacy = True
    first = client.embed("all-minilm", ["reset my password"])
    client.embed("all-minilm", ["again"])
    assert ollama.counts["/api/embed"] == 1  # probed once; the second call went straight to the old route
    assert ollama.counts["/api/embeddings"] == 2
    from semcache_cli.vectors import unit_vector

    modern = FakeOllama().embed("all-minilm", "reset my password")
    assert np.dot(unit_vector(first[0]), modern) == pytest.approx(1.0, abs=1e-5)


def test_busy_is_retried_with_backoff(client: OllamaClient, ollama: FakeOllama, sleeps: list[float]) -> None:
    ollama.faults.busy = 2
    generation = client.chat("llama3.2", USER, {})
    assert generation.text == "This is the answer to: one two three four"
    assert sleeps == [0.5, 1.0]


def test_busy_beyond_the_retries_fails_clearly(client: OllamaClient, ollama: FakeOllama, sleeps: list[float]) -> None:
    ollama.faults.busy = 100
    with pytest.raises(OllamaError, match="busy"):
        client.embed("all-minilm", ["x"])
    assert len(sleeps) == 3


def test_errors_are_mapped(client: OllamaClient, ollama: FakeOllama) -> None:
    with pytest.raises(ModelNotFound, match="ollama pull llama9"):
        client.chat("llama9", USER, {})
    with pytest.raises(ModelNotFound, match="ollama pull mxbai-embed-large"):
        client.embed("mxbai-embed-large", ["x"])
    ollama.faults.chat_status = (500, "timed out waiting for llama-server to start")
    with pytest.raises(OllamaError, match=r"timed out waiting for llama-server to start \(HTTP 500\)"):
        client.chat("llama3.2", USER, {})
    ollama.faults.embed_status = (400, "the input length exceeds the context length")
    with pytest.raises(EmbedInputTooLong):
        client.embed("all-minilm", ["x"])


def test_unreachable_server() -> None:
    c = OllamaClient("http://127.0.0.1:9", timeout=5.0)
    with pytest.raises(OllamaUnreachable, match=r"cannot reach Ollama at http://127.0.0.1:9"):
        c.chat("llama3.2", USER, {})
    c.close()


def test_slow_first_token_within_the_timeout_is_fine(ollama: FakeOllama) -> None:
    ollama.faults.delay = 0.6
    c = OllamaClient(ollama.url, timeout=5.0)
    assert c.chat("llama3.2", USER, {}).done_reason == "stop"
    c.close()


def test_a_reply_slower_than_the_timeout_times_out(ollama: FakeOllama) -> None:
    ollama.faults.delay = 2.0
    c = OllamaClient(ollama.url, timeout=0.3)
    with pytest.raises(OllamaUnreachable, match="timed out after 0.3 s"):
        c.chat("llama3.2", USER, {})
    c.close()


@pytest.mark.parametrize(
    ("fault", "message"),
    [("error_after", "failed mid-answer"), ("drop_after", "dropped mid-answer"), ("malformed_after", "malformed JSON")],
)
def test_broken_streams_raise_after_the_partial_text(client: OllamaClient, ollama: FakeOllama, fault: str, message: str) -> None:
    setattr(ollama.faults, fault, 2)
    seen: list[str] = []
    with pytest.raises(GenerationFailed, match=message):
        client.chat("llama3.2", USER, {}, on_token=seen.append)
    assert "".join(seen) == "This is "


def test_final_chunk_metrics_are_kept(client: OllamaClient) -> None:
    generation = client.chat("llama3.2", USER, {"temperature": 0.0})
    assert (generation.prompt_tokens, generation.completion_tokens) == (4, 9)
    assert generation.total_s == pytest.approx(4.935886791)


def test_one_connection_serves_many_calls(client: OllamaClient, ollama: FakeOllama) -> None:
    for i in range(3):
        client.embed("all-minilm", [f"question {i}"])
        assert client.chat("llama3.2", USER, {}).text == "This is the answer to: one two three four"
    assert ollama.connections == 1


def test_a_connection_the_server_closed_is_reopened(client: OllamaClient, ollama: FakeOllama) -> None:
    ollama.faults.idle_close = True  # as a server does with a kept-alive connection left idle
    for _ in range(3):
        assert len(client.embed("all-minilm", ["x"])[0]) == 384
        assert client.chat("llama3.2", USER, {}).done_reason == "stop"
    assert ollama.counts["/api/chat"] == 3 and ollama.connections == 6


def test_the_read_timeout_is_not_the_connect_timeout(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("semcache_cli.ollama.CONNECT_TIMEOUT_S", 0.2)
    ollama.faults.delay = 0.6  # longer than connecting may take, well within the read timeout
    c = OllamaClient(ollama.url, timeout=5.0)
    assert c.chat("llama3.2", USER, {}).done_reason == "stop"
    ollama.faults.idle_close = True  # and again on a reopened connection
    assert c.chat("llama3.2", USER, {}).done_reason == "stop"
    assert c.chat("llama3.2", USER, {}).done_reason == "stop"
    c.close()


def test_an_interrupted_answer_never_leaks_into_the_next_one(client: OllamaClient, ollama: FakeOllama) -> None:
    class Stop(Exception):
        pass

    def stop_at_first_piece(_: str) -> None:
        raise Stop()

    with pytest.raises(Stop):
        client.chat("llama3.2", USER, {}, on_token=stop_at_first_piece)
    other = [{"role": "user", "content": "five six"}]
    assert client.chat("llama3.2", other, {}).text == "This is the answer to: five six"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_on_the_same_origin_is_followed_with_the_post_and_the_key(
        ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-same-origin")
    ollama.faults.redirects = {"/old/api/chat": (status, "/api/chat"), "/old/api/embed": (status, "/api/embed")}
    c = OllamaClient(ollama.url + "/old", timeout=5.0)
    assert c.chat("llama3.2", USER, {}).text == "This is the answer to: one two three four"
    assert len(c.embed("all-minilm", ["x", "y"])) == 2
    c.close()
    assert [(method, path) for method, path, _ in ollama.seen] == [
        ("POST", "/old/api/chat"), ("POST", "/api/chat"), ("POST", "/old/api/embed"), ("POST", "/api/embed")]
    assert all(headers["authorization"] == "Bearer sk-same-origin" for _, _, headers in ollama.seen)
    assert ollama.requests[0][1]["messages"] == USER  # the body came along


@pytest.fixture(scope="module")
def _front() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


@pytest.mark.parametrize("status", [301, 307, 308])
def test_the_api_key_never_follows_a_redirect_to_another_origin(
        ollama: FakeOllama, _front: FakeOllama, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-only-for-the-front")
    front = _front
    front.reset()
    front.faults.redirects = {"/api/chat": (status, f"{ollama.url}/api/chat")}  # another port: another origin
    c = OllamaClient(front.url, timeout=5.0)
    try:
        assert c.chat("llama3.2", USER, {}).done_reason == "stop"
    finally:
        c.close()
    assert front.seen[0][2]["authorization"] == "Bearer sk-only-for-the-front"
    assert [(m, p) for m, p, _ in ollama.seen] == [("POST", "/api/chat")]
    assert "authorization" not in ollama.seen[0][2]


def test_a_303_becomes_a_get_as_it_means(ollama: FakeOllama) -> None:
    ollama.faults.redirects = {"/api/chat": (303, "/")}
    c = OllamaClient(ollama.url, timeout=5.0)
    try:
        with pytest.raises(GenerationFailed, match="malformed JSON mid-answer"):  # "Ollama is running", as text
            c.chat("llama3.2", USER, {})
    finally:
        c.close()
    assert [(m, p) for m, p, _ in ollama.seen] == [("POST", "/api/chat"), ("GET", "/")]


def test_redirects_are_bounded(ollama: FakeOllama) -> None:
    ollama.faults.redirects = {"/api/chat": (307, "/loop/api/chat"), "/loop/api/chat": (307, "/api/chat")}
    c = OllamaClient(ollama.url, timeout=5.0)
    try:
        with pytest.raises(GenerationFailed, match="redirected more than 5 times"):
            c.chat("llama3.2", USER, {})
    finally:
        c.close()
    assert len(ollama.seen) == 6  # the request and five redirects followed


@pytest.mark.parametrize("location", ["ftp://example.com/api/chat", "http://[::1/api/embed", "http://h:99999/x",
                                      "/a b\x01", "/caf\u00e9"])
def test_a_redirect_that_cannot_be_followed_is_an_error(ollama: FakeOllama, location: str) -> None:
    ollama.faults.redirects = {"/api/embed": (308, location)}
    c = OllamaClient(ollama.url, timeout=5.0)
    try:
        with pytest.raises(OllamaError, match="redirected to") as caught:
            c.embed("all-minilm", ["x"])
    finally:
        c.close()
    assert type(caught.value) is OllamaError


def test_a_timeout_past_what_a_socket_can_wait_still_works(ollama: FakeOllama) -> None:
    c = OllamaClient(ollama.url, timeout=1e21)  # --timeout 999999999999999999999s parses; time_t does not hold it
    try:
        assert c.chat("llama3.2", USER, {}).done_reason == "stop"
        assert len(c.embed("all-minilm", ["x"])[0]) == 384
    finally:
        c.close()


class CountingTransport:
    """The real socket transport, counting the connections a client opens and where."""

    def __init__(self) -> None:
        self.opened: list[http11.Origin] = []

    def connect(self, origin: http11.Origin, deadline: float, proxy: http11.Proxy | None) -> http11.Connection:
        self.opened.append(origin)
        return http11.SocketTransport().connect(origin, deadline, proxy)


def test_one_kept_alive_connection_serves_a_clients_calls(ollama: FakeOllama) -> None:
    transport = CountingTransport()
    c = OllamaClient(ollama.url, timeout=5.0, transport=transport)
    try:
        c.embed("all-minilm", ["one"])
        c.chat("llama3.2", USER, {})
        c.embed("all-minilm", ["two", "three"])
    finally:
        c.close()
    assert len(transport.opened) == 1


def test_a_connection_the_server_let_go_is_reopened_once(ollama: FakeOllama) -> None:
    ollama.faults.idle_close = True  # every reply ends its connection, unannounced
    transport = CountingTransport()
    c = OllamaClient(ollama.url, timeout=5.0, transport=transport)
    try:
        for text in ("one", "two", "three"):
            assert c.embed("all-minilm", [text])[0] is not None
    finally:
        c.close()
    assert len(transport.opened) == 3


def test_a_redirect_to_another_origin_opens_a_connection_there(ollama: FakeOllama, _front: FakeOllama) -> None:
    _front.reset()
    _front.faults.redirects = {"/api/chat": (307, f"{ollama.url}/api/chat")}
    transport = CountingTransport()
    c = OllamaClient(_front.url, timeout=5.0, transport=transport)
    try:
        assert c.chat("llama3.2", USER, {}).done_reason == "stop"
    finally:
        c.close()
    assert [origin.port for origin in transport.opened] == [_front.port, ollama.port]
