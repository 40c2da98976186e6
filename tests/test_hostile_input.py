"""Inputs semcache does not control the size of: an endless pipe on stdin (`yes | semcache
ask -`, `yes | semcache replay -`), a line with no end, a config file that is not one.
Each test runs semcache as a real subprocess on a real pipe and watches its memory in
/proc: it must stay bounded, stop with a clear error (exit 2) past the bound, and end
on SIGINT (130) or SIGTERM (143) while it reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from semcache_cli import cli, config

RSS_CAP_KB = 400_000  # far above what 16 MB of input needs, far below what an unbounded read reaches
DEADLINE_S = 30.0


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Feeder:
    """Writes `chunk` into the child's stdin again and again until the child stops
    reading (EPIPE) or `stop` is set, counting the bytes the pipe took."""

    def __init__(self, proc: subprocess.Popen[bytes], chunk: bytes) -> None:
        self.proc, self.chunk, self.written = proc, chunk, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        try:
            while not self.stop.is_set():
                self.written += os.write(fd, self.chunk)
        except OSError:  # EPIPE: the child closed its stdin or exited
            pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "semcache_cli", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=os.environ.copy())


def _watch(proc: subprocess.Popen[bytes], until: float) -> tuple[int | None, int]:
    """Poll the child until it exits or `until`; (exit code or None, the most RSS seen).
    A child past RSS_CAP_KB is killed at once: the test has failed, the machine must not."""
    peak = 0
    while time.monotonic() < until:
        peak = max(peak, _rss_kb(proc.pid))
        if peak > RSS_CAP_KB:
            proc.kill()
            proc.wait()
            return None, peak
        if proc.poll() is not None:
            return proc.returncode, peak
        time.sleep(0.01)
    return None, peak


def _finish(proc: subprocess.Popen[bytes], feeder: Feeder) -> tuple[str, str]:
    feeder.close()
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    return out.decode(), err.decode()


def _endless(chunk: bytes, *args: str) -> tuple[int | None, str, int]:
    """semcache reading `chunk` again and again on stdin: (exit code, stderr, bytes the
    pipe took), once its RSS was checked against the cap all along."""
    proc = _spawn(*args)
    feeder = Feeder(proc, chunk)
    code, peak = _watch(proc, time.monotonic() + DEADLINE_S)
    _, err = _finish(proc, feeder)
    assert peak <= RSS_CAP_KB, f"RSS reached {peak:,} kB reading an endless stdin"
    return code, err, feeder.written


def test_an_endless_question_on_stdin_stops_at_the_bound_with_little_memory() -> None:
    code, err, written = _endless(b"What is this\n" * 5000, "ask", "-", "--cache-only")
    assert code == 2, err
    assert err.strip().splitlines() == [
        "semcache: error: the question on stdin is longer than 16.0 MB, the most semcache reads; nothing was asked"]
    # the child read the bound and a little more, then stopped: the pipe took no more
    assert config.MAX_INPUT_BYTES < written < config.MAX_INPUT_BYTES * 4


def test_a_question_up_to_the_bound_is_read_whole(ollama: object) -> None:
    """Just under the bound is still a question (what the cache then does with a long
    one is the engine's business): the reading does not cut or refuse it."""
    question = ("word " * (config.MAX_INPUT_BYTES // 5))[: config.MAX_INPUT_BYTES - 1] + "?"
    proc = subprocess.run([sys.executable, "-m", "semcache_cli", "ask", "-", "--cache-only"], input=question.encode(),
                          capture_output=True, cwd=REPO, timeout=60)
    assert "longer than" not in proc.stderr.decode()


@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "terminated")])
def test_a_signal_ends_ask_while_it_reads_a_slow_endless_pipe(signum: int, code: int, word: str) -> None:
    proc = _spawn("ask", "-", "--cache-only")
    assert proc.stdin is not None
    deadline = time.monotonic() + DEADLINE_S
    sent = 0
    while sent < 1_000_000 and time.monotonic() < deadline:  # the pipe holds 64 KiB: the child is reading
        sent += os.write(proc.stdin.fileno(), b"What is this\n" * 1000)
    feeder = Feeder(proc, b"What is this\n")  # then a trickle that never reaches the bound
    proc.send_signal(signum)
    got, _ = _watch(proc, time.monotonic() + DEADLINE_S)
    _, err = _finish(proc, feeder)
    assert got == code, err
    assert word in err


@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "terminated")])
def test_a_signal_ends_replay_while_it_reads_an_endless_pipe(signum: int, code: int, word: str) -> None:
    """`yes "What is this" | semcache replay -`: the lines never end, the reading never
    waits; a signal still ends it at once."""
    proc = _spawn("replay", "-", "--dry-run")
    feeder = Feeder(proc, b"What is this\n" * 5000)
    deadline = time.monotonic() + DEADLINE_S
    while feeder.written < 1_000_000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)  # the child has read most of it: its handlers are installed
    proc.send_signal(signum)
    got, peak = _watch(proc, time.monotonic() + 10)
    _, err = _finish(proc, feeder)
    assert got == code, f"exit {got} (RSS {peak:,} kB): {err}"
    assert word in err


def test_a_replay_line_with_no_end_stops_at_the_bound() -> None:
    code, err, _ = _endless(b"What is this " * 5000, "replay", "-", "--dry-run")  # no line break, ever
    assert code == 2, err
    assert err.strip().splitlines() == [
        "semcache: error: stdin: line 1 is longer than 16.0 MB, the most semcache reads of one line; nothing was replayed"]


def test_a_replay_file_with_an_overlong_line_names_it(tmp_path: Path) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_bytes(b"first question\nsecond question\n" + b"x" * (config.MAX_INPUT_BYTES + 10) + b"\nlast\n")
    proc = subprocess.run([sys.executable, "-m", "semcache_cli", "replay", str(queries), "--dry-run"],
                          capture_output=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == (f"semcache: error: {queries}: line 3 is longer than 16.0 MB, the most "
                                            "semcache reads of one line; nothing was replayed")


def test_replay_lines_split_as_before(tmp_path: Path) -> None:
    """CRLF, a lone CR and a missing final newline, read in chunks, give the lines a
    whole read gave (a chunk boundary may fall anywhere)."""
    data = b"one\r\ntwo\rthree\n\n" + b"q" * 70_000 + b"\r\nlast"
    path = tmp_path / "q.txt"
    path.write_bytes(data)
    assert list(cli._read_lines(str(path))) == data.splitlines()


@pytest.mark.parametrize("data", [b"", b"\n", b"a\r", b"a\r\r\nb\r", b"\r\n\r\n", b"x" * 65_535 + b"\r\nz",
                                  b"x" * 65_536 + b"\r", b"a\n\rb\n"])
def test_replay_line_splitting_edge_cases(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "q.txt"
    path.write_bytes(data)
    assert list(cli._read_lines(str(path))) == data.splitlines()


def test_a_config_file_past_its_bound_is_refused_unread(tmp_path: Path) -> None:
    """A config file is a few lines: one of megabytes (a log written to the wrong name, a
    file something keeps appending to) is refused, not parsed whole."""
    big = tmp_path / "config.toml"
    big.write_text('threshold = 0.9\n' + "# padding\n" * 150_000)
    proc = subprocess.run([sys.executable, "-m", "semcache_cli", "stats"], capture_output=True, cwd=REPO, timeout=60,
                          env={**os.environ, "SEMCACHE_CONFIG": str(big)})
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == f"semcache: error: config file {big}: larger than 1 MB, which no config file is"
