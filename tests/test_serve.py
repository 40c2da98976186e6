"""`semcache serve` with real clients: the official ollama package and raw HTTP over
loopback, against a real server thread (or process) in front of the test server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama as ollama_lib
import pytest
from conftest import REPO, calibrated, claim_free, in_threads, logged, stored
from fake_ollama import FakeOllama

from semcache_cli import config
from semcache_cli.serve import ServeOptions, run

Q = "How do I reset my password?"
ANSWER = "This is the answer to: How do I reset my password?"
PARAPHRASE = "how do I reset my password please"


_clients: list[ollama_lib.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop()._client.close()


def wait_for(condition: Any, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Served:
    def __init__(self, url: str, log: list[str]) -> None:
        self.url = url
        self.log = log

    def client(self, **kwargs: Any) -> ollama_lib.Client:
        client = ollama_lib.Client(host=self.url, **kwargs)
        _clients.append(client)
        return client

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=10, **kwargs)


def start(db: str, upstream: str, **options: Any) -> tuple[Served, threading.Event, threading.Thread]:
    settings = config.load_settings({"db": db, "timeout": "10s"})
    settings.ollama_url = config.parse_ollama_host(upstream)
    log: list[str] = []
    address: list[str] = []
    ready = threading.Event()
    stop = threading.Event()

    def on_ready(url: str) -> None:
        address.append(url)
        ready.set()

    opts = ServeOptions(port=0, log=log.append, ready=on_ready, **options)
    thread = threading.Thread(target=run, args=(settings, opts, stop), daemon=True)
    thread.start()
    assert ready.wait(10)
    return Served(address[0], log), stop, thread


@pytest.fixture
def served(ollama: FakeOllama, isolated_env: Path) -> Iterator[Served]:
    calibrated(isolated_env)  # the semantic layer is on
    server, stop, thread = start(str(isolated_env), ollama.url)
    yield server
    stop.set()
    thread.join(10)


def test_generate_miss_then_hits_with_the_official_client(served: Served, ollama: FakeOllama, isolated_env: Path) -> None:
    client = served.client()
    first = client.generate(model="llama3.2", prompt=Q)
    assert (first.response, first.done, first.done_reason) == (ANSWER, True, "stop")
    again = client.generate(model="llama3.2", prompt=Q)
    streamed = list(client.generate(model="llama3.2", prompt=Q, stream=True))
    assert again.response == ANSWER and again.done
    assert "".join(part.response for part in streamed) == ANSWER
    assert len(streamed) > 2 and streamed[-1].done and not any(part.done for part in streamed[:-1])
    assert ollama.counts["/api/generate"] == 1
    assert wait_for(lambda: len(logged(isolated_env)) == 3)  # hits are recorded in batches, within 50 ms
    assert [row.path for row in logged(isolated_env)] == ["model", "exact", "exact"]
    assert wait_for(lambda: len(served.log) == 3)  # a line is written once its reply is sent
    assert [line.split()[3:5] for line in served.log] == [["200", "miss"], ["200", "exact"], ["200", "exact"]]


def test_headers_say_what_happened(served: Served) -> None:
    miss = served.post("/api/generate", {"model": "llama3.2", "prompt": Q, "stream": False})
    exact = served.post("/api/generate", {"model": "llama3.2", "prompt": Q, "stream": False})
    semantic = served.post("/api/generate", {"model": "llama3.2", "prompt": PARAPHRASE, "stream": False})
    assert (miss.headers["x-semcache"], miss.headers["x-semcache-entry"]) == ("miss", "1")  # stored before the reply
    assert miss.headers["x-semcache-miss-reason"] == "no_match"
    assert (exact.headers["x-semcache"], exact.headers["x-semcache-entry"]) == ("exact", "1")
    assert (semantic.headers["x-semcache"], semantic.headers["x-semcache-entry"]) == ("semantic", "1")
    assert 0.85 <= float(semantic.headers["x-semcache-similarity"]) < 1
    body = semantic.json()
    assert body["response"] == ANSWER and body["model"] == "llama3.2" and body["done"] is True
    assert miss.json().keys() <= body.keys() | {"context"}


def test_chat_streamed_and_not_and_scoped_by_the_conversation(served: Served, ollama: FakeOllama) -> None:
    client = served.client()
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
               {"role": "assistant", "content": "Hi!"}]
    first = client.chat(model="llama3.2", messages=[*history, {"role": "user", "content": Q}])
    assert first.message.content == ANSWER and first.message.role == "assistant"
    parts = list(client.chat(model="llama3.2", messages=[*history, {"role": "user", "content": PARAPHRASE}],
                             stream=True))
    assert "".join(part.message.content for part in parts) == ANSWER and parts[-1].done
    assert ollama.counts["/api/chat"] == 1  # the paraphrase, in the same conversation: a semantic hit
    other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bonjour"},
             {"role": "assistant", "content": "Salut !"}]
    client.chat(model="llama3.2", messages=[*other, {"role": "user", "content": Q}])
    assert ollama.counts["/api/chat"] == 2  # another conversation before it: never served from the first


def test_chat_shares_the_scope_of_semcache_ask(served: Served, ollama: FakeOllama, isolated_env: Path) -> None:
    from conftest import run_cli

    assert run_cli("ask", Q, "-s", "Be brief.", "--db", str(isolated_env)).exit_code == 0
    reply = served.client().chat(model="llama3.2", messages=[{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": Q}])
    assert reply.message.content == ANSWER and ollama.counts["/api/chat"] == 1


@pytest.mark.parametrize("extra, kind", [
    ({"images": ["aGVsbG8="]}, "pass"),
    ({"think": True}, "pass"),
    ({"context": [1, 2, 3]}, "pass"),
    ({"logprobs": True}, "pass"),  # a field this version does not know
    ({"format": "json"}, "exact"),
    ({"suffix": " the end"}, "exact"),
    ({"raw": True}, "exact"),
])
def test_decisions_per_field(served: Served, ollama: FakeOllama, isolated_env: Path, extra: dict, kind: str) -> None:
    body = {"model": "llama3.2", "prompt": Q, "stream": False, **extra}
    assert served.post("/api/generate", body).json()["response"] == ANSWER
    again = served.post("/api/generate", body)
    paraphrase = served.post("/api/generate", {**body, "prompt": PARAPHRASE})
    if kind == "pass":
        assert ollama.counts["/api/generate"] == 3 and stored(isolated_env) == []
        assert "x-semcache" not in again.headers and wait_for(lambda: served.log[-1].split()[4] == "pass")
    else:
        assert again.headers["x-semcache"] == "exact" and paraphrase.headers["x-semcache"] == "miss"
        assert ollama.counts["/api/generate"] == 2
        assert all(entry.embed_model is None for entry in stored(isolated_env))  # exact only: no vector


def test_answers_with_tool_calls_are_relayed_not_stored(served: Served, isolated_env: Path) -> None:
    stream = served.post("/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": Q}],
                                       "tools": [{"type": "function", "function": {"name": "f"}}], "stream": False})
    assert stream.status_code == 200 and stream.json()["message"]["content"] == ANSWER
    assert len(stored(isolated_env)) == 1  # the test server never calls tools: stored in the tools' scope
    plain = served.post("/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": Q}],
                                      "stream": False})
    assert plain.headers["x-semcache"] == "miss"  # other tool definitions, another scope


def test_everything_else_passes_through_untouched(served: Served, ollama: FakeOllama) -> None:
    assert httpx.get(served.url + "/").text == "Ollama is running"
    head = httpx.head(served.url + "/")
    assert head.status_code == 200 and head.content == b""
    assert httpx.get(served.url + "/api/version").json() == {"version": ollama.version}
    tags = served.client().list()
    assert {m.model for m in tags.models} == ollama.chat_models | set(ollama.embed_models)
    assert served.client().show("llama3.2").capabilities == ["completion"]
    missing = httpx.get(served.url + "/api/nothing-here")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    deleted = [httpx.request("DELETE", url + "/api/delete", content=b'{"model":"x"}') for url in (served.url, ollama.url)]
    assert deleted[0].status_code == deleted[1].status_code and deleted[0].content == deleted[1].content
    assert ("POST", "/api/show") in [(method, path) for method, path, _ in ollama.seen]
    bad = served.post("/api/generate", None, content=b"{not json")  # garbage goes to Ollama, which refuses it
    assert bad.status_code == 400 and "invalid character" in bad.json()["error"]


def test_embeddings_are_cached_exactly(served: Served, ollama: FakeOllama) -> None:
    client = served.client()
    first = client.embed(model="all-minilm", input=["hello", "world"])
    second = client.embed(model="all-minilm", input=["hello", "world"])
    legacy = [client.embeddings(model="all-minilm", prompt="hello").embedding for _ in range(2)]
    assert first.embeddings == second.embeddings and legacy[0] == legacy[1]
    assert ollama.counts["/api/embed"] == 1 and ollama.counts["/api/embeddings"] == 1
    client.embed(model="all-minilm", input=["hello", "there"])
    assert ollama.counts["/api/embed"] == 2


def test_sixteen_concurrent_clients_ask_the_model_once(served: Served, ollama: FakeOllama,
                                                       isolated_env: Path) -> None:
    ollama.faults.delay = 0.3
    results: list[str] = []

    def one(n: int) -> None:
        client = served.client()
        if n % 2:
            results.append("".join(p.response for p in client.generate(model="llama3.2", prompt=Q, stream=True)))
        else:
            results.append(client.generate(model="llama3.2", prompt=Q).response)

    assert in_threads(one, 16) == [] and results == [ANSWER] * 16
    assert ollama.counts["/api/generate"] == 1 and len(stored(isolated_env)) == 1


def test_a_client_gone_mid_stream_leaves_nothing_stored(served: Served, ollama: FakeOllama,
                                                        isolated_env: Path) -> None:
    ollama.faults.chunk_delay = 0.05
    with httpx.stream("POST", served.url + "/api/generate", json={"model": "llama3.2", "prompt": Q},
                      timeout=10) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["response"]
    assert wait_for(lambda: any(row.path == "error" for row in logged(isolated_env)))
    assert stored(isolated_env) == [] and claim_free(isolated_env, Q)
    assert [row.path for row in logged(isolated_env)] == ["error"]
    ollama.faults.chunk_delay = 0
    assert served.client().generate(model="llama3.2", prompt=Q).response == ANSWER  # asked again, whole


@pytest.mark.parametrize("fault", ["error_after", "drop_after", "malformed_after"])
def test_an_upstream_failing_mid_stream_stores_nothing(served: Served, ollama: FakeOllama, isolated_env: Path,
                                                       fault: str) -> None:
    setattr(ollama.faults, fault, 2)
    with pytest.raises(ollama_lib.ResponseError):
        "".join(part.response for part in served.client().generate(model="llama3.2", prompt=Q, stream=True))
    assert stored(isolated_env) == []
    setattr(ollama.faults, fault, None)
    assert served.client().generate(model="llama3.2", prompt=Q).response == ANSWER  # the server is still fine


def test_upstream_errors_are_relayed_and_nothing_is_stored(served: Served, ollama: FakeOllama,
                                                           isolated_env: Path) -> None:
    ollama.faults.chat_status = (500, "llama runner process has terminated")
    with pytest.raises(ollama_lib.ResponseError) as caught:
        served.client().generate(model="llama3.2", prompt=Q)
    assert caught.value.status_code == 500 and "terminated" in caught.value.error
    with pytest.raises(ollama_lib.ResponseError) as missing:
        served.client().generate(model="llama9", prompt=Q)
    assert stored(isolated_env) == []
    ollama.faults.chat_status = None
    with pytest.raises(ollama_lib.ResponseError) as missing:
        served.client().generate(model="llama9", prompt=Q)
    assert missing.value.status_code == 404 and stored(isolated_env) == []


def test_upstream_down_hits_still_served_misses_502(ollama: FakeOllama, isolated_env: Path) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    server, stop, thread = start(str(isolated_env), ollama.url)
    assert server.client().generate(model="llama3.2", prompt=Q).response == ANSWER
    stop.set()
    thread.join(10)
    server, stop, thread = start(str(isolated_env), f"127.0.0.1:{port}")  # nothing listens there
    try:
        assert server.client().generate(model="llama3.2", prompt=Q).response == ANSWER
        miss = server.post("/api/generate", {"model": "llama3.2", "prompt": "Something new", "stream": False})
        assert miss.status_code == 502 and "cannot reach Ollama" in miss.json()["error"]
        tags = httpx.get(server.url + "/api/tags")
        assert tags.status_code == 502 and "error" in tags.json()
    finally:
        stop.set()
        thread.join(10)


def test_bearer_token(ollama: FakeOllama, isolated_env: Path) -> None:
    server, stop, thread = start(str(isolated_env), ollama.url, token="s3cret token")
    try:
        refused = [server.post("/api/generate", {"model": "llama3.2", "prompt": Q}),
                   server.post("/api/generate", {"model": "llama3.2", "prompt": Q},
                               headers={"Authorization": "Bearer s3cret"}),
                   httpx.get(server.url + "/api/tags", headers={"Authorization": "Basic s3cret token"})]
        assert [r.status_code for r in refused] == [401, 401, 401] and "unauthorized" in refused[0].json()["error"]
        assert ollama.generations == 0
        client = server.client(headers={"Authorization": "Bearer s3cret token"})
        assert client.generate(model="llama3.2", prompt=Q).response == ANSWER
        assert all("authorization" not in headers for _, _, headers in ollama.seen)  # never sent on
    finally:
        stop.set()
        thread.join(10)


def raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_garbage_requests(served: Served, ollama: FakeOllama, isolated_env: Path) -> None:
    assert raw(served.url, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    too_big = raw(served.url, b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert too_big.startswith(b"HTTP/1.1 413") and b'"error"' in too_big
    chunked = raw(served.url, b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411")
    bad_length = raw(served.url, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert bad_length.startswith(b"HTTP/1.1 400")
    long_header = raw(served.url, b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
    assert long_header.startswith(b"HTTP/1.1 431")
    for body in ([1, 2], {"model": "llama3.2", "messages": []}, {"model": "llama3.2", "prompt": 5},
                 {"model": "llama3.2", "prompt": "\x00"}, {"prompt": Q}):
        reply = served.post("/api/chat" if "messages" in body else "/api/generate", body)
        assert reply.status_code in (200, 400, 404) and "x-semcache" not in reply.headers, (body, reply.text)
    assert stored(isolated_env) == []  # what the cache cannot read is Ollama's to judge, never stored
    assert httpx.get(served.url + "/").text == "Ollama is running"  # still serving


def test_access_log_has_no_prompt_unless_asked(ollama: FakeOllama, isolated_env: Path, served: Served) -> None:
    served.client().generate(model="llama3.2", prompt=Q)
    assert Q not in "\n".join(served.log)
    server, stop, thread = start(str(isolated_env), ollama.url, log_prompts=True)
    try:
        server.client().generate(model="llama3.2", prompt=Q)
        assert wait_for(lambda: server.log and json.dumps(Q) in server.log[-1])
    finally:
        stop.set()
        thread.join(10)


def test_stats_endpoint(served: Served, isolated_env: Path) -> None:
    client = served.client()
    client.generate(model="llama3.2", prompt=Q)
    client.generate(model="llama3.2", prompt=Q)
    assert wait_for(lambda: len(logged(isolated_env)) == 2)  # hits are recorded in batches, within 50 ms
    report = httpx.get(served.url + "/semcache/stats").json()
    assert report["requests"]["hits"]["exact"] == 1 and report["entries"]["total"] == 1
    assert report["serve"]["replies"] == {"miss": 1, "exact": 1}


def test_too_many_connections_get_503(ollama: FakeOllama, isolated_env: Path) -> None:
    server, stop, thread = start(str(isolated_env), ollama.url, max_connections=1)
    try:
        host, port = server.url.removeprefix("http://").split(":")
        held = socket.create_connection((host, int(port)))
        time.sleep(0.2)
        refused = httpx.get(server.url + "/")
        assert refused.status_code == 503 and "busy" in refused.json()["error"]
        held.close()
        deadline = time.monotonic() + 5
        while httpx.get(server.url + "/").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(server.url + "/").status_code == 200
    finally:
        stop.set()
        thread.join(10)


def test_sigterm_finishes_the_stream_in_flight_then_exits(ollama: FakeOllama, isolated_env: Path) -> None:
    """A real `semcache serve` process: SIGTERM mid-answer lets the answer finish (and be
    stored), refuses nothing half-done, and exits 0."""
    ollama.faults.chunk_delay = 0.05
    env = {**os.environ, "PYTHONPATH": str(REPO), "OLLAMA_HOST": ollama.url}
    proc = subprocess.Popen([sys.executable, "-m", "semcache_cli", "serve", "--port", "0", "--db", str(isolated_env)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = line.split("serving ", 1)[1].split(" ", 1)[0]
        pieces = []
        with httpx.stream("POST", url + "/api/generate", json={"model": "llama3.2", "prompt": Q}, timeout=10) as reply:
            for n, text in enumerate(reply.iter_lines()):
                if n == 1:
                    proc.send_signal(signal.SIGTERM)
                pieces.append(json.loads(text))
        assert "".join(p["response"] for p in pieces) == ANSWER and pieces[-1]["done"] is True
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert [entry.response for entry in stored(isolated_env)] == [ANSWER]


def test_serves_a_postgresql_store(ollama: FakeOllama, postgres_db: str, isolated_env: Path) -> None:
    server, stop, thread = start(postgres_db, ollama.url)
    try:
        client = server.client()
        assert client.generate(model="llama3.2", prompt=Q).response == ANSWER
        hit = server.post("/api/generate", {"model": "llama3.2", "prompt": Q, "stream": False})
        assert hit.headers["x-semcache"] == "exact" and hit.json()["response"] == ANSWER
        assert ollama.counts["/api/generate"] == 1
    finally:
        stop.set()
        thread.join(10)


def test_every_hit_is_recorded_by_the_time_the_server_stops(ollama: FakeOllama, isolated_env: Path) -> None:
    """Hits are recorded in batches, off the request's path: none is lost, the last
    ones written when the server stops."""
    server, stop, thread = start(str(isolated_env), ollama.url)
    server.client().generate(model="llama3.2", prompt=Q)

    def hits() -> None:
        with httpx.Client(base_url=server.url) as client:
            for _ in range(50):
                assert client.post("/api/generate", json={"model": "llama3.2", "prompt": Q, "stream": False}
                                   ).headers["x-semcache"] == "exact"

    assert in_threads(lambda _: hits(), 4) == []
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert [entry.hits for entry in stored(isolated_env)] == [200]
    assert [row.path for row in logged(isolated_env)].count("exact") == 200


# -- the OpenAI-compatible surface, with the official OpenAI SDK ------------------------------


def openai_client(served: Served, **kwargs: Any) -> Any:
    from openai import OpenAI

    client = OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, **kwargs)
    _closing.append(client)
    return client


_closing: list[Any] = []


@pytest.fixture(autouse=True)
def _close_openai_clients() -> Iterator[None]:
    yield
    while _closing:
        _closing.pop().close()


def test_openai_chat_streamed_and_not(served: Served, ollama: FakeOllama, isolated_env: Path) -> None:
    client = openai_client(served)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": Q}]
    first = client.chat.completions.create(model="llama3.2", messages=messages)
    assert (first.choices[0].message.content, first.choices[0].finish_reason) == (ANSWER, "stop")
    assert first.object == "chat.completion" and first.usage is not None
    again = client.chat.completions.with_raw_response.create(model="llama3.2", messages=messages)
    assert again.headers["x-semcache"] == "exact" and again.parse().choices[0].message.content == ANSWER
    chunks = list(client.chat.completions.create(
        model="llama3.2", messages=[messages[0], {"role": "user", "content": PARAPHRASE}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[0].object == "chat.completion.chunk"
    assert ollama.counts["/api/chat"] == 1  # the paraphrase was a semantic hit
    # the same question through Ollama's own API: the same scope, the same answer
    native = served.client().chat(model="llama3.2", messages=messages)
    assert native.message.content == ANSWER and ollama.counts["/api/chat"] == 1


def test_openai_streamed_miss_is_relayed_as_events_and_stored(served: Served, ollama: FakeOllama,
                                                               isolated_env: Path) -> None:
    with httpx.stream("POST", served.url + "/v1/chat/completions", timeout=10,
                      json={"model": "llama3.2", "messages": [{"role": "user", "content": Q}], "stream": True}) as reply:
        assert reply.headers["content-type"] == "text/event-stream" and reply.headers["x-semcache"] == "miss"
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(line.startswith("data: {") for line in events[:-1])
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in events[:-1])
    assert text == ANSWER and [entry.response for entry in stored(isolated_env)] == [ANSWER]


def test_openai_completions(served: Served, ollama: FakeOllama) -> None:
    client = openai_client(served)
    first = client.completions.create(model="llama3.2", prompt=Q)
    second = client.completions.create(model="llama3.2", prompt=Q, stream=True)
    assert first.choices[0].text == ANSWER and "".join(c.choices[0].text for c in second) == ANSWER
    assert ollama.counts["/api/generate"] == 1


def test_openai_errors_and_pass_through(served: Served, ollama: FakeOllama, isolated_env: Path) -> None:
    from openai import NotFoundError

    client = openai_client(served)
    with pytest.raises(NotFoundError) as caught:
        client.chat.completions.create(model="llama9", messages=[{"role": "user", "content": Q}])
    assert "not found" in str(caught.value)
    two = served.post("/v1/chat/completions", {"model": "llama3.2", "n": 2, "messages": [{"role": "user", "content": Q}]})
    assert two.status_code == 404 and "x-semcache" not in two.headers  # passed through: the test server has no /v1
    assert stored(isolated_env) == []


def test_a_port_in_use_is_a_usage_error(ollama: FakeOllama, isolated_env: Path) -> None:
    from semcache_cli.errors import UsageError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = config.load_settings({"db": str(isolated_env)})
        with pytest.raises(UsageError, match="cannot listen on 127.0.0.1"):
            run(settings, ServeOptions(port=taken.getsockname()[1]), threading.Event())
    alive = [thread.name for thread in threading.enumerate()]
    assert "semcache-serve-hits" not in alive and "semcache-serve" not in alive


def test_single_flight_with_another_semcache_process(served: Served, ollama: FakeOllama, isolated_env: Path) -> None:
    """A `semcache ask` process is answering the question; the same question through
    serve waits for that answer instead of asking the model again."""
    ollama.faults.delay = 1.0
    ollama.chat_started.clear()  # set by any earlier generation
    env = {**os.environ, "PYTHONPATH": str(REPO), "OLLAMA_HOST": ollama.url}
    asking = subprocess.Popen([sys.executable, "-m", "semcache_cli", "ask", Q, "--db", str(isolated_env)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert ollama.chat_started.wait(20)  # the other process holds the claim and is generating
        reply = served.post("/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": Q}],
                                          "stream": False})
        assert (reply.headers["x-semcache"], reply.json()["message"]["content"]) == ("exact", ANSWER)
        assert asking.wait(20) == 0
    finally:
        asking.kill()
        asking.wait()
        if asking.stdout is not None:
            asking.stdout.close()
    assert ollama.generations == 1
