"""Secrets in a database URL never reach the screen: masked as libpq reads the URL
(%-decoded names, any case, every secret parameter), in every message, report and error,
through real processes and, where a login is involved, the real PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, postgres_url

from semcache_cli import config

SECRET = "S3cr3t-9f2e"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semcache_cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://alice@h/db?pass%77ord=S3cr3t", "postgresql://alice@h/db?pass%77ord=***"),
    ("postgresql://alice@h/db?PASSWORD=S3cr3t&sslmode=require", "postgresql://alice@h/db?PASSWORD=***&sslmode=require"),
    ("postgresql://alice@h/db?sslpassword=k3y&password=%zzS3cr3t", "postgresql://alice@h/db?sslpassword=***&password=***"),
    ("postgresql://u@h/db?oauth_client_secret=c5&scram_client_key=a2", "postgresql://u@h/db?oauth_client_secret=***&scram_client_key=***"),
    ("postgresql://alice:S3%zzcr3t@h:1/db", "postgresql://alice:***@h:1/db"),
    ("postgresql://a:pa@ss@host/db", "postgresql://a:***@host/db"),  # libpq stops at the first @, urllib at the last
    ("POSTGRESQL://u:pw@h", "POSTGRESQL://u:***@h"),
    ("postgresql://u:p#w@h/db", "postgresql://u:***@h/db"),
    ("postgresql://host?password=a@b", "postgresql://host?password=***"),
    ("postgresql:///db?host=/tmp&user=bob", "postgresql:///db?host=/tmp&user=bob"),
    ("postgresql://u:@h/db?password=", "postgresql://u:@h/db?password="),
])
def test_every_secret_libpq_would_read_is_masked(url: str, shown: str) -> None:
    assert config.masked_url(url) == shown


def test_libpq_itself_reads_an_encoded_name_as_the_password() -> None:
    """Why the name is decoded before it is compared: libpq does, and logs in with it."""
    from psycopg.conninfo import conninfo_to_dict

    from semcache_cli.storage import postgres

    conninfo, _, shown = postgres.parse_url(f"postgresql://alice@h/db?pass%77ord={SECRET}&schema=s1")
    assert conninfo_to_dict(conninfo)["password"] == SECRET
    assert SECRET not in shown


def test_a_plus_in_a_password_reaches_libpq_as_a_plus() -> None:
    """libpq decodes only %-escapes: `a+b` is the password a+b, as psql reads it."""
    from psycopg.conninfo import conninfo_to_dict

    from semcache_cli.storage import postgres

    conninfo, schema, _ = postgres.parse_url("postgresql://u@h/db?password=a+b%2Bc&schema=my_schema")
    assert conninfo_to_dict(conninfo)["password"] == "a+b+c"
    assert schema == "my_schema"


@pytest.mark.parametrize(("url", "code"), [
    (f"postgresql://alice@127.0.0.1:1/db?pass%77ord={SECRET}", 6),
    (f"postgresql://alice@127.0.0.1:1/db?PASSWORD={SECRET}", 2),  # libpq refuses the name, the usage error quotes the URL
    (f"postgresql://alice:{SECRET[:4]}%zz{SECRET[4:]}@127.0.0.1:1/db", 2),  # libpq quotes the token it cannot decode
    (f"postgresql://alice@127.0.0.1:1/db?sslpassword={SECRET}", 6),
    (f"POSTGRESQL://alice:{SECRET}@127.0.0.1:1/db", 6),
    (f"alice:{SECRET}@h/x://y", 2),  # not a scheme semcache knows: the text before :// is not echoed
    (f"postgresql://alice:{SECRET}@[::1/db", 2),
])
def test_no_error_shows_a_secret_of_the_url(url: str, code: int) -> None:
    for args in (["stats", "--db", url], ["inspect", "--db", url], ["copy", "--from", url, "--to", "x.db"]):
        proc = _run(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("semcache: error: "), proc.stderr
        for shown in (SECRET, SECRET[:4], SECRET[4:]):
            assert shown not in proc.stderr, (args, proc.stderr)
    # the same from the environment and from the config file
    assert SECRET[4:] not in _run("stats", env={"SEMCACHE_DB": url}).stderr


def test_a_password_with_an_at_sign_in_ollama_host_is_hidden() -> None:
    proc = _run("stats", env={"OLLAMA_HOST": "http://u:p4ss@w0rd@host x"})
    assert proc.returncode == 2
    assert "w0rd" not in proc.stderr and "p4ss" not in proc.stderr


def test_scrub_takes_each_secret_out_as_written_and_decoded() -> None:
    url = "postgresql://u:pa%40ss@h/db?sslpassword=k%65y9"
    assert config.scrub("driver said: pa@ss, pa%40ss, key9, k%65y9", [url]) == "driver said: ***, ***, ***, ***"


def test_the_shared_store_logs_in_with_an_encoded_password_and_never_shows_it(postgres_server: str,
                                                                              tmp_path: Path) -> None:
    """A real login on the real server, the password given as ?pass%77ord= (which libpq
    decodes): stats, its JSON, inspect's error and copy's report name the store with
    the password masked."""
    import uuid

    schema = f"test_{uuid.uuid4().hex[:12]}"
    base = postgres_url(postgres_server, schema)
    url = f"{base}&pass%77ord={SECRET}&sslpassword={SECRET}x"
    try:
        from semcache_cli.storage.postgres import PostgresStore

        PostgresStore.open(url, timeout_s=30).close()  # the store, made with that URL
        text = _run("stats", "--db", url)
        assert text.returncode == 0, text.stderr
        figures = _run("stats", "--json", "--db", url)
        assert figures.returncode == 0, figures.stderr
        assert json.loads(figures.stdout)["database"].endswith("pass%77ord=***&sslpassword=***")
        missing = _run("inspect", "424242", "--db", url)
        assert missing.returncode == 2 and "pass%77ord=***" in missing.stderr
        copied = _run("copy", "--from", url, "--to", str(tmp_path / "copy.db"), "--json")
        assert copied.returncode == 0, copied.stderr
        assert json.loads(copied.stdout)["source"].endswith("pass%77ord=***&sslpassword=***")
        for proc in (text, figures, missing, copied):
            assert SECRET not in proc.stdout + proc.stderr
    finally:
        import psycopg

        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
