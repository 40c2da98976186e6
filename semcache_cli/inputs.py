"""Reading input semcache does not control the size of (a question on stdin, a file of
queries): a bounded os.read at a time, so an endless pipe is neither held in memory nor
able to keep SIGINT and SIGTERM from ending the command. A single read of all of it is
one C call that runs to the end of the input before any signal handler can run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

from semcache_cli.errors import UsageError


def size_text(count: int) -> str:
    """A bound in the units `semcache stats` prints (decimal MB)."""
    return f"{count / 1_000_000:.1f} MB"


READ_CHUNK = 64 * 1024


def _chunks(stream: Any) -> Iterator[bytes]:
    """A stream's bytes, one bounded os.read at a time: a single read of all of it would
    hold an endless pipe (`yes | semcache ask -`) in memory, and, being one C call, would
    never let a SIGINT or SIGTERM handler run. Streams without a file descriptor (tests'
    in-memory ones) are read the same way through their own read."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation, AttributeError):
        source = stream.buffer if hasattr(stream, "buffer") else stream
        while chunk := source.read(READ_CHUNK):
            yield chunk if isinstance(chunk, bytes) else chunk.encode()
        return
    while chunk := os.read(fd, READ_CHUNK):
        yield chunk


def read_bounded(stream: Any, limit: int) -> bytes | None:
    """All of `stream` when it is at most `limit` bytes; None (and no more is read) past it."""
    chunks: list[bytes] = []
    total = 0
    for chunk in _chunks(stream):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _overlong(source: str, number: int, limit: int) -> UsageError:
    return UsageError(f"{source}: line {number:,} is longer than {size_text(limit)}, the most semcache "
                      "reads of one line; nothing was replayed")


def bounded_lines(stream: Any, limit: int, source: str) -> Iterator[bytes]:
    """The lines of `stream` (split as bytes.splitlines does), read as they come; a line
    longer than `limit` bytes stops the reading with a usage error, so no line, and no
    stream without line breaks, is ever held whole past the bound."""
    pending = b""
    number = 0
    for chunk in _chunks(stream):
        lines = (pending + chunk).splitlines(keepends=True)
        # The last piece may not be whole yet: no line end, or a \r whose \n comes next.
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for line in lines:
            number += 1
            body = line.rstrip(b"\r\n")
            if len(body) > limit:
                raise _overlong(source, number, limit)
            yield body
        if len(pending.rstrip(b"\r")) > limit:
            raise _overlong(source, number + 1, limit)
    if pending:
        yield pending.rstrip(b"\r")
