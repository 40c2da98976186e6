"""The OpenAI-compatible surface of `semcache serve` (/v1/chat/completions and
/v1/completions, as Ollama itself offers them): a request the cache may answer is
translated into Ollama's own (/api/chat, /api/generate), planned and answered as those
are, and every reply, cached or relayed, is written in OpenAI's shapes (one object, or
server-sent events ending in `data: [DONE]`). A request it may not answer is passed to
Ollama's /v1 endpoint untouched.

The same question asked through either API shares one scope: the options are mapped to
Ollama's (max_tokens -> num_predict), so an answer stored through /api/chat serves
/v1/chat/completions and back.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from semcache_cli.serve_ollama import Shape

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

# OpenAI's sampling fields, as Ollama's options
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
            "max_tokens": "num_predict", "max_completion_tokens": "num_predict",
            "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
_IGNORED = {"user", "stream_options"}  # no effect on the answer
_CHAT_FIELDS = {"model", "messages", "stream", "response_format", "n", *_OPTIONS, *_IGNORED}
_COMPLETION_FIELDS = {"model", "prompt", "stream", "suffix", "n", *_OPTIONS, *_IGNORED}
_FINISH = {"stop": "stop", "length": "length"}


def translate(path: str, body: Any) -> tuple[str, dict[str, Any]] | str:
    """(Ollama's path, Ollama's body) for an OpenAI request, or why it passes through."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    chat = path == CHAT_PATH
    unknown = set(body) - (_CHAT_FIELDS if chat else _COMPLETION_FIELDS)
    if unknown:
        return f"field {sorted(unknown)[0]!r}"
    if body.get("n", 1) != 1:
        return "n"
    stream = body.get("stream", False)  # OpenAI's default, unlike Ollama's
    native: dict[str, Any] = {"model": body.get("model"), "stream": stream}
    options = {_OPTIONS[key]: body[key] for key in _OPTIONS if body.get(key) is not None}
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    if options:
        native["options"] = options
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and set(m) <= {"role", "content"} and isinstance(m.get("content"), str)
                for m in messages):
            return "messages other than text"
        native["messages"] = messages
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            native["format"] = "json"
        elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                return "response_format"
            native["format"] = schema
        elif fmt not in (None, {"type": "text"}):
            return "response_format"
        return "/api/chat", native
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        return "a prompt other than one text"
    native["prompt"] = prompt
    if body.get("suffix"):
        native["suffix"] = body["suffix"]
    return "/api/generate", native


class OpenAIShape(Shape):
    """Ollama's chunks written as OpenAI's replies."""

    stream_type = "text/event-stream"
    verbatim = False

    def __init__(self, path: str, model: str) -> None:
        self.chat = path == CHAT_PATH
        self.model = model
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.first = True

    def _choice(self, chunk: dict[str, Any], streamed: bool) -> dict[str, Any]:
        text = (chunk.get("message") or {}).get("content", "") if self.chat else chunk.get("response", "")
        done = chunk.get("done") is True
        finish = _FINISH.get(chunk.get("done_reason") or "stop", "stop") if done else None
        if not self.chat:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        if streamed:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if self.first or text else {}
            self.first = False
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}

    def _object(self, chunk: dict[str, Any], streamed: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if streamed and self.chat else "")
        reply: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                                 "system_fingerprint": "fp_semcache", "choices": [self._choice(chunk, streamed)]}
        if chunk.get("done") is True and not streamed:
            prompt, completion = chunk.get("prompt_eval_count") or 0, chunk.get("eval_count") or 0
            reply["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
        return reply

    def whole(self, chunk: dict[str, Any]) -> bytes:
        return json.dumps(self._object(chunk, False), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def line(self, chunk: dict[str, Any]) -> bytes:
        data = json.dumps(self._object(chunk, True), ensure_ascii=False, separators=(",", ":"))
        return f"data: {data}\n\n".encode()

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, data: bytes) -> bytes:
        """Ollama's error body as OpenAI's."""
        try:
            message = json.loads(data).get("error", "")
        except (ValueError, AttributeError):
            message = data.decode("utf-8", "replace")
        return json.dumps({"error": {"message": str(message), "type": "api_error", "param": None, "code": None}},
                          ensure_ascii=False).encode("utf-8")

    def error_line(self, message: str) -> bytes:
        return b"data: " + self.error(json.dumps({"error": message}).encode()) + b"\n\n"
