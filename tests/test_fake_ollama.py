"""The test server speaks Ollama closely enough that the official client cannot tell."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import ollama as official
import pytest
from fake_ollama import BUSY_TEXT, FakeOllama

_clients: list[official.Client] = []


def client(server: FakeOllama) -> official.Client:
    _clients.append(official.Client(host=server.url))
    return _clients[-1]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop()._client.close()


def test_official_client_streams_chat(ollama: FakeOllama) -> None:
    chunks = list(client(ollama).chat(model="llama3.2", messages=[{"role": "user", "content": "hi there"}], stream=True))
    assert "".join(c.message.content or "" for c in chunks) == "This is the answer to: hi there"
    assert [c.done for c in chunks].count(True) == 1 and chunks[-1].done
    assert chunks[-1].done_reason == "stop" and chunks[-1].eval_count == len(chunks) - 1
    assert chunks[0].eval_count is None  # metrics only on the final chunk


def test_official_client_non_streaming_generate_and_embed(ollama: FakeOllama) -> None:
    c = client(ollama)
    reply = c.generate(model="llama3.2", prompt="hello")
    assert reply.response == "This is the answer to: hello" and reply.done
    embedded = c.embed(model="nomic-embed-text", input=["a b", "c"])
    assert [len(v) for v in embedded.embeddings] == [768, 768]
    assert np.linalg.norm(embedded.embeddings[0]) == pytest.approx(1.0, abs=1e-5)
    assert embedded.prompt_eval_count == 3
    short = c.embed(model="nomic-embed-text", input="a b", dimensions=64)
    assert len(short.embeddings[0]) == 64 and np.linalg.norm(short.embeddings[0]) == pytest.approx(1.0, abs=1e-5)


def test_official_client_lists_and_shows_models(ollama: FakeOllama) -> None:
    names = {m.model for m in client(ollama).list().models}
    assert {"llama3.2:latest", "nomic-embed-text:latest"} <= names
    shown = client(ollama).show("nomic-embed-text")
    assert shown.capabilities == ["embedding"]
    assert shown.modelinfo["nomic-bert.embedding_length"] == 768


def test_official_client_sees_the_real_error_texts(ollama: FakeOllama) -> None:
    c = client(ollama)
    with pytest.raises(official.ResponseError) as missing:
        c.chat(model="llama9", messages=[{"role": "user", "content": "x"}])
    assert (missing.value.status_code, missing.value.error) == (404, "model 'llama9' not found")
    with pytest.raises(official.ResponseError) as missing_embed:
        c.embed(model="mxbai-embed-large", input="x")
    assert missing_embed.value.error == 'model "mxbai-embed-large" not found, try pulling it first'
    with pytest.raises(official.ResponseError) as wrong_kind:
        c.chat(model="nomic-embed-text", messages=[{"role": "user", "content": "x"}])
    assert (wrong_kind.value.status_code, wrong_kind.value.error) == (400, '"nomic-embed-text" does not support chat')
    ollama.faults.busy = 1
    with pytest.raises(official.ResponseError) as busy:
        c.generate(model="llama3.2", prompt="x")
    assert (busy.value.status_code, busy.value.error) == (503, BUSY_TEXT)


def test_official_client_sees_a_mid_stream_error(ollama: FakeOllama) -> None:
    ollama.faults.error_after = 2
    stream = client(ollama).chat(model="llama3.2", messages=[{"role": "user", "content": "a b c d"}], stream=True)
    with pytest.raises(official.ResponseError) as err:
        list(stream)
    assert err.value.status_code == -1


def test_plain_text_404_and_405(ollama: FakeOllama) -> None:
    missing = httpx.get(f"{ollama.url}/api/nothing")
    assert (missing.status_code, missing.text, missing.headers["content-type"]) == (
        404, "404 page not found", "text/plain; charset=utf-8")
    assert httpx.get(f"{ollama.url}/api/chat").status_code == 405
    assert httpx.get(ollama.url).text == "Ollama is running"
    assert httpx.post(f"{ollama.url}/api/chat", content=b"").json() == {"error": "missing request body"}


def test_stream_framing_is_ndjson_without_blank_lines(ollama: FakeOllama) -> None:
    with httpx.stream("POST", f"{ollama.url}/api/chat",
                      json={"model": "llama3.2", "messages": [{"role": "user", "content": "x y"}]}) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        body = r.read().decode()
    lines = body.split("\n")
    assert lines[-1] == "" and all(lines[:-1])


def test_legacy_server_has_no_api_embed(ollama: FakeOllama) -> None:
    ollama.faults.legacy = True
    r = httpx.post(f"{ollama.url}/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    assert (r.status_code, r.text) == (404, "404 page not found")
    old = httpx.post(f"{ollama.url}/api/embeddings", json={"model": "nomic-embed-text", "prompt": "x"}).json()
    assert np.linalg.norm(old["embedding"]) > 1.5  # raw runner output, not unit length


def test_embeddings_are_deterministic_and_word_sensitive(ollama: FakeOllama) -> None:
    c = client(ollama)
    a, a2, b = c.embed(model="all-minilm", input=["reset my password", "reset my password", "order a pizza"]).embeddings
    assert a == a2
    assert float(np.dot(a, b)) < 0.5
