"""`semcache serve` under load, against the project's Ollama-compatible test server
(tests/fake_ollama.py, in a process of its own), each figure beside its target and a
floor measured in the same run.

    python bench/serve.py [--seconds 5] [--requests 100000]

- exact hits: 16 concurrent keep-alive clients POST the same /api/generate (stream:
  false); replies/s and p50, beside the floor: the same clients against a bare
  standard-library server sending a fixed reply of the same size (no cache at all).
- semantic hits: the same, cycling through paraphrases of one stored question (a
  semantic hit stores nothing, so each stays a semantic hit).
- a miss's extra latency to the first token: new questions, each asked of serve and of
  the test server directly, in alternation (paired); median of the differences.
- memory: the serving process's RSS before and after --requests exact hits.

The clients are a separate process of threads on raw sockets, so the figures are the
servers', not an HTTP library's. Targets (issue 24): exact p50 <= 3 ms and >= 1,500/s,
semantic >= 500/s, a miss's extra time to first token <= 3 ms, RSS flat.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 16

FAKE = r'''
import sys, time
sys.path.insert(0, %r)
from fake_ollama import FakeOllama
server = FakeOllama().start()
print(server.port, flush=True)
time.sleep(10 ** 6)
'''

FLOOR = r'''
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = b"x" * %d
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "
                         + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
class S(ThreadingHTTPServer):
    daemon_threads = True
    def get_request(self):
        conn, addr = super().get_request(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True); s.serve_forever()
'''

# 16 threads, each on one kept-alive connection, sending its requests in turn until the
# time (or the count) is up; prints replies/s, p50 and p99 in ms, and the errors.
LOAD = r'''
import json, socket, sys, threading, time
port, seconds, total, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bodies = json.loads(sys.stdin.read())
requests = [(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
             % len(b) + b) for b in (x.encode() for x in bodies)]
lat, errors, done = [], [0], [0]
lock = threading.Lock()
stop = time.perf_counter() + seconds
def run(i):
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mine, n = [], i
    while time.perf_counter() < stop:
        with lock:
            if total and done[0] >= total: break
            done[0] += 1
        t = time.perf_counter(); s.sendall(requests[n % len(requests)]); n += clients; buf = b""
        while b"\r\n\r\n" not in buf: buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"): errors[0] += 1
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(rest) < length: rest += s.recv(65536)
        mine.append(time.perf_counter() - t)
    with lock: lat.extend(mine)
began = time.perf_counter()
threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
[t.start() for t in threads]; [t.join() for t in threads]
elapsed = time.perf_counter() - began
lat.sort()
print(len(lat) / elapsed, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000, errors[0])
'''

Q = "How do I reset my password?"
FILLERS = ["please", "now", "kindly", "today", "quickly", "again", "here", "then"]


def spawn(code: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def load(port: int, bodies: list[str], seconds: float, total: int = 0,
         clients: int = CLIENTS) -> tuple[float, float, float, int]:
    out = subprocess.run([sys.executable, "-c", LOAD, str(port), str(seconds), str(total), str(clients)],
                         input=json.dumps(bodies),
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), int(out[3])


def post(port: int, body: dict, stream: bool = False) -> tuple[float, bytes]:
    """One request on a new connection: the time to the first body bytes, and the reply."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                     % len(data) + data)
        buf = b""
        first = None
        while chunk := sock.recv(65536):
            buf += chunk
            if first is None and b"\r\n\r\n" in buf and buf.split(b"\r\n\r\n", 1)[1]:
                first = time.perf_counter() - start
        return first or 0.0, buf


def hit_kind(reply: bytes) -> str:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"x-semcache:"):
            return line.split(b":", 1)[1].strip().decode()
    return "?"


def first_token(conn: http.client.HTTPConnection, body: dict) -> float:
    """On a kept-alive connection, as clients use one: the time to the first NDJSON line."""
    start = time.perf_counter()
    conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.readline()
    elapsed = time.perf_counter() - start
    response.read()
    return elapsed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=100_000, help="exact hits for the memory figure")
    parser.add_argument("--misses", type=int, default=200)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="semcache-serve-bench-"))
    fake, fake_port = spawn(FAKE % str(REPO / "tests"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OLLAMA_HOST": f"127.0.0.1:{fake_port}",
           "XDG_CONFIG_HOME": str(workdir)}
    serve_port = socket.socket()
    serve_port.bind(("127.0.0.1", 0))
    port = serve_port.getsockname()[1]
    serve_port.close()
    serve = subprocess.Popen([sys.executable, "-m", "semcache_cli", "serve", "--port", str(port),
                              "--db", str(workdir / "cache.db"), "--max-connections", "64"],
                             env=env, stderr=subprocess.DEVNULL)  # the access log is written, and dropped
    try:
        wait_port(port)
        print(f"semcache serve in front of the test server; {CLIENTS} keep-alive clients; {os.cpu_count()} cores")
        # a cache of 40 questions: the embedding model's scale is made at 32
        for n in range(40):
            post(port, {"model": "llama3.2", "prompt": f"background question {n} about {FILLERS[n % 8]} things",
                        "stream": False})
        _, reply = post(port, {"model": "llama3.2", "prompt": Q, "stream": False})
        exact_body = json.dumps({"model": "llama3.2", "prompt": Q, "stream": False})
        size = len(reply.split(b"\r\n\r\n", 1)[1])

        floor_proc, floor_port = spawn(FLOOR % size)
        try:
            wait_port(floor_port)
            floor = load(floor_port, [exact_body], args.seconds)
        finally:
            floor_proc.terminate()
            floor_proc.wait()
        exact = load(port, [exact_body], args.seconds)
        alone = load(port, [exact_body], args.seconds, clients=1)
        paraphrases = [json.dumps({"model": "llama3.2", "prompt": f"how do I reset my password {filler}",
                                   "stream": False}) for filler in FILLERS]
        kinds = [hit_kind(post(port, json.loads(body))[1]) for body in paraphrases]
        paraphrases = [body for body, kind in zip(paraphrases, kinds, strict=True) if kind == "semantic"]
        semantic = load(port, paraphrases, args.seconds)

        print(f"  floor (bare stdlib server, fixed reply) {floor[0]:8,.0f} replies/s  p50 {floor[1]:5.2f} ms")
        print(f"  exact hit                                {exact[0]:8,.0f} replies/s  p50 {exact[1]:5.2f} ms  "
              f"p99 {exact[2]:5.2f} ms  errors {exact[3]}   target >= 1,500/s, p50 <= 3 ms: "
              f"{exact[0] / 1500:.2f}x the rate target, {exact[0] / floor[0]:.2f}x the floor")
        print(f"  exact hit, one client alone              {alone[0]:8,.0f} replies/s  p50 {alone[1]:5.2f} ms  "
              f"p99 {alone[2]:5.2f} ms   target p50 <= 3 ms: {alone[1] / 3:.2f}x")
        print(f"  semantic hit ({len(paraphrases)} paraphrases)      {semantic[0]:8,.0f} replies/s  "
              f"p50 {semantic[1]:5.2f} ms  p99 {semantic[2]:5.2f} ms  errors {semantic[3]}   "
              f"target >= 500/s: {semantic[0] / 500:.2f}x")

        direct, through = [], []
        to_fake, to_serve = http.client.HTTPConnection("127.0.0.1", fake_port), http.client.HTTPConnection("127.0.0.1", port)
        for n in range(args.misses):
            body = {"model": "llama3.2", "prompt": f"a new question number {n} on {FILLERS[n % 8]}", "stream": True}
            direct.append(first_token(to_fake, body))
            through.append(first_token(to_serve, {**body, "prompt": body["prompt"] + " too"}))
        to_fake.close()
        to_serve.close()
        extra = sorted((t - d) * 1000 for t, d in zip(through, direct, strict=True))
        direct_ms = sorted(d * 1000 for d in direct)[len(direct) // 2]
        print(f"  miss, time to first token: direct {direct_ms:5.2f} ms, extra through serve (median of "
              f"{args.misses} pairs) {extra[len(extra) // 2]:5.2f} ms, p90 {extra[int(len(extra) * 0.9)]:5.2f} ms"
              f"   target <= 3 ms: {extra[len(extra) // 2] / 3:.2f}x")

        load(port, [exact_body], 60, 2_000)  # warm
        before = rss_kib(serve.pid)
        began = time.perf_counter()
        done = load(port, [exact_body], 3600, args.requests)
        after = rss_kib(serve.pid)
        print(f"  memory: RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after {args.requests:,} exact hits "
              f"({time.perf_counter() - began:.0f} s, {done[0]:,.0f}/s, errors {done[3]}): "
              f"{(after - before) / 1024:+.1f} MiB, {after / max(before, 1):.3f}x")
    finally:
        serve.terminate()
        serve.wait()
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
