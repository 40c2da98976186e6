"""Which HTTP server stack `semcache serve` is built on, by measurement: the same small
JSON reply (what a cached answer costs to send, minus the lookup) from each candidate,
under 16 concurrent keep-alive clients, with and without a blocking call per request
(the store lookup is a blocking SQLite call: an async server must hand it to a thread).

    python bench/serve_stack.py [--seconds 3]

Candidates: the standard library's ThreadingHTTPServer (a thread per connection), and
uvicorn (httptools, uvloop) with Starlette, the usual ASGI pair. The client is a
separate process of 16 threads on raw sockets, so it measures the servers, not httpx.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading

from serve import wait_port  # bench/serve.py

BODY = json.dumps({"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z",
                   "response": "Semantic caching reuses answers to questions that mean the same." * 3,
                   "done": True, "done_reason": "stop"}).encode()
REQUEST = (b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 45\r\n\r\n"
           b'{"model":"llama3.2","prompt":"hi","stream":0}')

STDLIB = r'''
import socket, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = %r
BLOCK = %r
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if BLOCK: time.sleep(0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
class S(ThreadingHTTPServer):
    daemon_threads = True
    def get_request(self):  # as any real server does: no Nagle delay on small replies
        conn, addr = super().get_request(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True); s.serve_forever()
'''

ASGI = r'''
import socket, time, uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import Route
BODY = %r
BLOCK = %r
def lookup(): time.sleep(0)
async def generate(request):
    await request.body()
    if BLOCK: await run_in_threadpool(lookup)
    return Response(BODY, media_type="application/json; charset=utf-8")
app = Starlette(routes=[Route("/api/generate", generate, methods=["POST"])])
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, http="httptools", loop="uvloop")).run(sockets=[sock])
'''

CLIENT = r'''
import socket, sys, threading, time
port, seconds, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
REQUEST = %r
counts, lat = [0] * clients, []
stop = time.perf_counter() + seconds
def run(i):
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mine = []
    while time.perf_counter() < stop:
        t = time.perf_counter(); s.sendall(REQUEST); buf = b""
        while b"\r\n\r\n" not in buf: buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(rest) < n: rest += s.recv(65536)
        mine.append(time.perf_counter() - t); counts[i] += 1
    lat.extend(mine)
ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
[t.start() for t in ts]; [t.join() for t in ts]
lat.sort()
print(sum(counts) / seconds, lat[len(lat) // 2] * 1000)
'''


def measure(source: str, block: bool, seconds: float, clients: int) -> tuple[float, float]:
    server = subprocess.Popen([sys.executable, "-c", source % (BODY, block)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline()) if server.stdout else 0
        wait_port(port)
        out = subprocess.run([sys.executable, "-c", CLIENT % REQUEST, str(port), str(seconds), str(clients)],
                             capture_output=True, text=True, check=True).stdout.split()
        return float(out[0]), float(out[1])
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    print(f"{args.clients} keep-alive clients, {args.seconds:g} s each, {os.cpu_count()} cores")
    results = {}
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        sys.exit("the comparison needs uvicorn and starlette: pip install 'uvicorn[standard]' starlette")
    for name, source in (("stdlib ThreadingHTTPServer", STDLIB), ("uvicorn+starlette", ASGI)):
        for block in (False, True):
            rate, p50 = measure(source, block, args.seconds, args.clients)
            results[(name, block)] = rate
            print(f"  {name:28} {'with a blocking lookup' if block else 'reply only':24} "
                  f"{rate:8,.0f} replies/s  p50 {p50:6.2f} ms")
    for block in (False, True):
        ratio = results[("stdlib ThreadingHTTPServer", block)] / results[("uvicorn+starlette", block)]
        print(f"stdlib / uvicorn+starlette ({'blocking lookup' if block else 'reply only'}): {ratio:.2f}x")


if __name__ == "__main__":
    threading.stack_size(0)
    main()
