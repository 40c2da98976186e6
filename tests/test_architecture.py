"""The shape of the house, checked on the source: which module may import which (the
table of docs/architecture.md), no import cycle (lazy imports inside functions count
too), and no SQL, sqlite3 or database driver outside semcache_cli/storage/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semcache_cli"

# What each module may import of the package; keep in step with docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "__main__": {"cli"},
    "api": {"config", "engine", "errors", "ollama", "render"},
    "cli": {"config", "errors", "inputs", "render", "engine", "inspection", "purge", "stats", "replay", "copying",
            "calibrate", "outputs", "serve", "storage.models", "storage.selector"},
    "outputs": {"config", "errors"},
    "serve": {"api", "config", "engine", "errors", "serve_ollama", "serve_openai", "stats", "storage.models",
              "storage.port"},
    "serve_openai": {"serve_ollama"},
    "serve_ollama": {"config", "errors", "http11", "ollama", "policy"},
    "copying": {"config", "errors", "outputs", "storage", "storage.models", "storage.scales", "storage.selector"},
    "calibrate": {"config", "engine", "storage.scales"},
    "inspection": {"config", "errors", "engine", "storage", "storage.models", "storage.port", "storage.selector"},
    "purge": {"config", "errors", "storage", "storage.port", "storage.scales", "storage.selector"},
    "stats": {"config", "errors", "storage", "storage.port", "storage.scales"},
    "replay": {"config", "errors", "engine", "live_replay", "ollama", "policy", "replay_core", "storage",
               "storage.models", "storage.scales", "vectors"},
    "live_replay": {"config", "errors", "engine", "ollama", "replay_core", "storage"},
    "replay_core": {"config", "errors", "engine"},
    "render": {"engine", "policy", "storage.models"},
    "engine": {"config", "errors", "guards", "ollama", "policy", "singleflight", "storage", "storage.models",
               "storage.port", "storage.scales", "vectors"},
    "singleflight": {"errors", "storage.port"},
    "ollama": {"errors", "http11"},
    "http11": set(),
    "config": {"errors", "guards", "ownership"},
    "ownership": set(),
    "inputs": {"errors"},
    "policy": set(),
    "guards": set(),
    "vectors": set(),
    "errors": set(),
    "": set(),  # the package itself, which holds only __version__: anyone may import it
}
STORAGE_MAY_USE = {"config", "errors", "ownership", "policy", "vectors"}  # besides each other
SQL = re.compile(r"\b(SELECT\b.*\bFROM|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX|TRIGGER)|PRAGMA "
                 r"|BEGIN IMMEDIATE|VACUUM\b)")
DRIVERS = {"sqlite3", "sqlite_utils", "psycopg", "pgvector"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found[name.removesuffix("__init__").rstrip(".")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """The package modules this one imports (explicitly, anywhere in it), and the top-level
    names of everything else it imports."""
    inner: set[str] = set()
    outer: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (inner if alias.name.startswith("semcache_cli") else outer).add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if not node.module.startswith("semcache_cli"):
                outer.add(node.module)
                continue
            base = node.module.removeprefix("semcache_cli").lstrip(".")
            for alias in node.names:  # `from semcache_cli.storage import sqlite_index` imports a module
                submodule = f"{base}.{alias.name}".lstrip(".")
                inner.add(submodule if submodule in known else base)
    inner = {m.removeprefix("semcache_cli").lstrip(".") for m in inner} - {name}
    return {m for m in inner if m in known}, {m.split(".")[0] for m in outer}


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_module_imports_only_what_its_layer_may(graph: dict[str, tuple[set[str], set[str]]]) -> None:
    for name, (inner, _) in graph.items():
        if name == "storage" or name.startswith("storage."):
            allowed = STORAGE_MAY_USE | {m for m in graph if m.startswith("storage")}
        else:
            assert name in ALLOWED, f"{name} is not in the module table of docs/architecture.md"
            allowed = ALLOWED[name]
        assert inner - {""} <= allowed, f"{name} imports {sorted(inner - allowed - {''})}"


def test_there_is_no_import_cycle(graph: dict[str, tuple[set[str], set[str]]]) -> None:
    edges = {name: inner for name, (inner, _) in graph.items()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_no_sql_and_no_database_driver_outside_storage(graph: dict[str, tuple[set[str], set[str]]]) -> None:
    for name, path in modules().items():
        if name == "storage" or name.startswith("storage."):
            continue
        drivers = graph[name][1] & DRIVERS
        assert not drivers, f"{name} imports {sorted(drivers)}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL.search(node.value), f"SQL in {name}: {node.value[:60]!r}"


def test_the_checks_would_catch_a_leak(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text("import sqlite3\nfrom semcache_cli.storage import sqlite\n"
                     "def f(c):\n    return c.execute('SELECT id FROM entries')\n")
    inner, outer = imports("leaky", leaky, {"storage", "storage.sqlite"})
    assert inner == {"storage.sqlite"} and "sqlite3" in outer
    assert SQL.search("SELECT id FROM entries") and SQL.search("DELETE FROM claims WHERE x")
    assert not SQL.search("Select the entries to delete from the cache")
