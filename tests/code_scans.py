"""How many times one PostgreSQL lookup scanned its scope's sign codes: 1 when the
sampled radius kept enough of them, 2 when the statement had to scan again without it
(tests/test_store_postgres.py checks both; bench/postgres.py counts how often)."""

from __future__ import annotations

from collections.abc import Sequence

from semcache_cli.storage import postgres
from semcache_cli.storage.postgres import PostgresStore


def code_scans(store: PostgresStore, scope: str, embed_model: str, query: Sequence[float]) -> int:
    statement = store._code_search(scope, embed_model, query, postgres._vector_text(query), 5)
    plan = store._conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement).fetchone()[0]
    nodes, ran = [plan[0]["Plan"]], 0
    while nodes:
        node = nodes.pop()
        nodes += node.get("Plans", [])
        # the radius's sample is a scan of its own; a branch never run has no loops
        ran += node.get("Relation Name") == "entry_codes" and node["Node Type"] != "Sample Scan" \
            and node["Actual Loops"] > 0
    return ran
