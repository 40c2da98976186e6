"""The shared store: PostgreSQL with pgvector, one cache for a team, a fleet of CI
runners or several machines (`--db postgresql://user@host/db`).

Design choices:
- psycopg 3 in autocommit mode, no prepared statements and no session state, so it
  works through a transaction-pooling PgBouncer. Each operation is one statement
  (writable CTEs chain an upsert, its vector, its log row and the release of its claim)
  or one explicit transaction.
- A schema of its own (`semcache`, or `?schema=NAME` in the URL), versioned in its `meta`
  table and migrated under a transaction-level advisory lock, so many first users at
  once are safe. `CREATE EXTENSION vector` only when it is missing.
- Vectors in one table, in an untyped pgvector column kept inline (storage MAIN). A
  lookup in a scope of at most EXACT_UP_TO vectors is an exact scan; a larger one is the
  SQLite backend's two passes in one statement: a narrow side table of sign codes (one
  bit per dimension, keyed by a 64-bit hash of model, dims and scope) scanned by Hamming
  distance for the nearest CODE_CANDIDATES, whose vectors alone are ranked exactly. The
  scan sorts only the codes within a radius taken from a 1% sample, and scans again
  without it in the rare lookup where that kept too few. An HNSW index agreed with an
  exact scan on 67% of paraphrase-like lookups at 1M random vectors even at its widest
  search; the code scan agreed on all, in 1/20 of the space.
- Single-flight claims are leases in a table, on the server's clock, renewed by a
  heartbeat: they outlive neither their holder (the lease runs out) nor a pooler's
  reassignment of server connections, as session advisory locks would.
- No secret leaves: `location` is the URL with its secrets masked (config.masked_url, which
  reads the URL as libpq does), and every message built from a driver's error is scrubbed
  of them, as written and as libpq decoded them.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
import urllib.parse
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from semcache_cli import policy
from semcache_cli.config import MASK, SECRET_PARAMETERS, masked_url, url_secrets
from semcache_cli.errors import (
    StoreDamaged,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnreachable,
    UnreadableEntry,
    UsageError,
)
from semcache_cli.storage.models import (
    CALIBRATION_COLUMNS,
    ENTRY_FIELDS,
    LOG_FIELDS,
    STORED_FIELDS,
    Entry,
    EntryCounts,
    LogRow,
    Neighbour,
    NewEntry,
    RequestCounts,
    TopEntry,
    VectorGroup,
    calibration_columns,
    calibration_from_columns,
)
from semcache_cli.storage.translate import translating

if TYPE_CHECKING:
    from semcache_cli.storage.selector import Selector
    from semcache_cli.vectors import Calibration

SCHEMA_VERSION = 6
DEFAULT_SCHEMA = "semcache"
EXACT_UP_TO = 5_000  # vectors in a scope searched exactly, without the index
CODE_CANDIDATES = 256  # nearest sign codes whose vectors are ranked exactly, as in the SQLite backend
# A code of fewer than 977 bits is stored with a one-byte header, and every comparison then
# copies it out of the page first: a third of the scan's time. So codes are padded with
# zero bits, which change no distance, to 977 rounded up to whole bytes.
CODE_BITS_AT_LEAST = 984
# The scan sorts only the codes within a radius: the RADIUS_RANK-th nearest code of the
# scope among a RADIUS_SAMPLE_PERCENT sample of the table's pages. About RADIUS_RANK /
# (PERCENT / 100) = 1,000 of the scope's codes lie within it, whatever its geometry. It is
# a sample of pages, not of the scope: free beside a scope that fills most of the table,
# 1% of a table scan beside one that does not; and a scope on a few pages of a large table
# often has fewer than RADIUS_RANK codes in the sample, and is then sorted whole.
RADIUS_SAMPLE_PERCENT = 1.0
RADIUS_RANK = 10
DELETE_BATCH = 500
COPY_CHUNK = 10_000  # answers a bulk load holds in memory at once
ROW_OVERHEAD = 28  # a heap tuple's header and line pointer, beside its data
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SORTS = {
    "newest": "created_at DESC, id DESC",
    "oldest": "created_at ASC, id ASC",
    "hits": "hits DESC, id DESC",
    "last-hit": "last_hit_at IS NULL, last_hit_at DESC, id DESC",
}
_NOW = "extract(epoch FROM clock_timestamp())"


def parse_url(url: str) -> tuple[str, str, str]:
    """(what libpq is given, the schema, the URL as it may be shown). `schema` is
    semcache's own query parameter, taken out before libpq sees the URL."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise UsageError("the store location is not a usable postgresql:// URL", setting="db") from None
    schema = DEFAULT_SCHEMA
    kept = []
    # Every parameter but semcache's own goes to libpq as it was written: libpq decodes
    # only %-escapes, so a `+` (in a password too) is a `+`, not the space a form decoder
    # would make of it.
    for item in parts.query.split("&") if parts.query else []:
        name, _, value = item.partition("=")
        if urllib.parse.unquote(name) == "schema":
            schema = urllib.parse.unquote(value)
        else:
            kept.append(item)
    if not _SCHEMA_NAME.fullmatch(schema):
        raise UsageError(f"schema={schema!r} in the store location is not a plain lower-case name (letters, digits, _)",
                         setting="db")
    return _unsplit(parts._replace(query="&".join(kept))), schema, masked_url(url)


def _unsplit(parts: urllib.parse.SplitResult) -> str:
    """urlunsplit, but keeping the // of an empty host (postgresql:///db, a local socket)."""
    text = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return text + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def _secrets(conninfo: str, url: str) -> list[str]:
    """Every secret a message about this store could quote: the URL's, as written and
    %-decoded (config.url_secrets), and each secret parameter as libpq itself read it."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error:  # libpq cannot parse it: the URL's own secrets are all there is
        given = {}
    read = [str(given[name]) for name in SECRET_PARAMETERS if given.get(name)]
    return sorted({*read, *url_secrets(url)}, key=len, reverse=True)


def store_error(store: PostgresStore, exc: BaseException) -> StoreError:
    return server_error(exc, store.location, store.secrets, store.timeout_s)


def server_error(exc: BaseException, location: str, secrets: list[str], timeout_s: float) -> StoreError:
    """What a psycopg error means to the user, by SQLSTATE; one line, never a secret."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, MASK)
    state = getattr(exc, "sqlstate", None) or ""
    if state == "57014":  # query_canceled: the statement timeout
        return StoreUnreachable(f"the cache store {location} did not answer within {timeout_s:g} s (raise the timeout)",
                                setting="timeout")
    if state == "53100":
        return StoreFull(f"the cache store {location} is out of disk space ({text}); nothing was stored")
    if state in ("42501", "25006"):  # insufficient_privilege; read_only_sql_transaction (a standby)
        return StoreReadOnly(f"the cache store {location} refused: {text} (ask the database's administrator to "
                             "grant this role the privilege)")
    if state.startswith("XX00"):
        return StoreDamaged(f"the cache store {location} reports damaged data: {text}")
    if not state or state.startswith(("08", "28", "53", "57P", "3D")):
        # no SQLSTATE: the connection itself failed or was lost
        return StoreUnreachable(f"cannot reach the cache store {location}: {text}")
    return StoreError(f"the cache store {location} failed: {text}")


# The server's clock, in the seconds since the epoch every stored time is.
_SERVER_NOW = "extract(epoch from clock_timestamp())::double precision"


def _vector_text(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(x):.9g}" for x in vector) + "]"  # 9 digits keep a float32 exact


def _parse_vector(text: str) -> array:
    return array("f", (float(x) for x in text.strip("[]").split(","))) if text.strip("[]") else array("f")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _group_key(embed_model: str, dims: int, scope: str) -> int:
    """The code table's key of a (model, dims, scope): md5's first 8 bytes as a signed
    int8, as migration 3's SQL computes it (a collision only adds candidates that the
    exact ranking's filter then drops)."""
    from hashlib import md5

    return int.from_bytes(md5(f"{embed_model}/{dims}/{scope}".encode()).digest()[:8], "big", signed=True)


def _code_text(vector: Sequence[float]) -> str:
    """A vector's sign code as a bit string: 1 where the component is positive, then
    zeros up to CODE_BITS_AT_LEAST."""
    return "".join("1" if x > 0 else "0" for x in vector).ljust(CODE_BITS_AT_LEAST, "0")


def _reconnecting(method: Callable[..., Any]) -> Callable[..., Any]:
    """Once more on a new connection when this one turns out to be gone: a model call can
    take minutes, and a pooler, a NAT's idle timeout or a server restart may drop an idle
    connection meanwhile. For operations that are safe to repeat (reads, upserts, claim
    moves, log rows: at worst a row twice, when the server died mid-commit)."""

    @functools.wraps(method)
    def call(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except psycopg.OperationalError:
            if not self._conn.broken:
                raise
        self._conn.close()
        self._conn = self._connect(self._conninfo, self.location, self.timeout_s, self.secrets)
        return method(self, *args, **kwargs)

    return call


@translating(psycopg.Error, store_error)
class PostgresStore:
    """One connection to the shared store (one per process, or per thread: `reopen`)."""

    def __init__(self, conn: psycopg.Connection[Any], conninfo: str, schema: str, location: str,
                 timeout_s: float, pgvector: tuple[int, ...], vector_schema: str, secrets: list[str]) -> None:
        self._conn = conn
        self._conninfo = conninfo
        self.schema = schema
        self.location = location
        self.secrets = secrets
        self.timeout_s = timeout_s
        self.pgvector = pgvector
        self._vector_schema = vector_schema
        s, v = f'"{schema}"', '"' + vector_schema.replace('"', '""') + '"'
        self._s, self._vector, self._distance = s, f"{v}.vector", f"OPERATOR({v}.<=>)"
        self._product = f"OPERATOR({v}.<#>)"  # the negative inner product
        self._vec_schema = v
        self._entry_columns = ", ".join(ENTRY_FIELDS)
        self._insert_request = (f"INSERT INTO {s}.requests ({', '.join(LOG_FIELDS)}) "
                                f"VALUES ({', '.join('%s' for _ in LOG_FIELDS)})")
        self.clock: Callable[[], float] = time.time  # this machine's clock (injectable: tests skew it)
        self.skew = 0.0  # how far the server's clock is ahead of it, measured once a connection

    def _measure_skew(self) -> None:
        """The server's clock against this machine's, once per connection (to within half
        a round trip): now() is then the server's time without a query per ask."""
        before = self.clock()
        server = float(_one(self._conn.execute(f"SELECT {_SERVER_NOW}"))[0])
        self.skew = server - (before + self.clock()) / 2

    def now(self) -> float:
        """The server's clock: entry times are stamped and compared on it (the engine's
        clock, purge's, stats'), so clients whose clocks disagree (a host days fast)
        still agree on what is live. Claims use the server's clock in SQL itself."""
        return self.clock() + self.skew

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, timeout_s: float = 300.0, create: bool = True,
             clock: Callable[[], float] | None = None) -> PostgresStore:
        conninfo, schema, location = parse_url(url)
        secrets = _secrets(conninfo, url)
        conn = cls._connect(conninfo, location, timeout_s, secrets)
        try:
            state = cls._describe(conn, schema)
            if not create and (state is None or state[2] is None):
                raise UsageError(f"there is no cache in schema {schema} at {location} (check the URL and ?schema=)")
            before = int(state[2]) if state is not None and state[2] is not None else 0
            if before < SCHEMA_VERSION:
                cls._migrate(conn, schema, location)
                state = cls._describe(conn, schema)
            assert state is not None and state[2] is not None
            if int(state[2]) > SCHEMA_VERSION:
                raise StoreError(f"the cache store {location} (schema {schema}) was written by a newer semcache "
                                 f"(schema {state[2]}, this one knows {SCHEMA_VERSION}); upgrade semcache")
        except psycopg.Error as exc:
            conn.close()
            raise server_error(exc, location, secrets, timeout_s) from None
        except BaseException:
            conn.close()
            raise
        store = cls(conn, conninfo, schema, location, timeout_s, _version(state[0]), state[1], secrets)
        if clock is not None:
            store.clock = clock
        store._measure_skew()
        if 0 < before < 2 <= int(state[2]):  # a store from before the calibrated scale: one for each model now
            from semcache_cli.storage import scales

            scales.rebuild_all(store)
        if 0 < before < 4 <= int(state[2]):
            # The migration rewrote the codes, which autovacuum does not count as inserts: it
            # would never mark their pages all-visible, and every scan would check each row.
            store._conn.execute(f"VACUUM (ANALYZE) {store._s}.entry_codes")
        return store

    @staticmethod
    def _connect(conninfo: str, location: str, timeout_s: float, secrets: list[str]) -> psycopg.Connection[Any]:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            given = conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            for secret in secrets:  # libpq quotes a token it cannot decode, a password's too
                reason = reason.replace(secret, MASK)
            raise UsageError(f"{location} is not a usable PostgreSQL URL ({reason})", setting="db") from None
        # Every statement is bounded by --timeout; a user's own `options` are kept.
        options = f"{given.get('options') or ''} -c statement_timeout={int(timeout_s * 1000)}".strip()
        try:
            return psycopg.connect(
                make_conninfo(conninfo, options=options, application_name=given.get("application_name") or "semcache",
                              connect_timeout=given.get("connect_timeout") or max(2, int(min(timeout_s, 10)))),
                autocommit=True, prepare_threshold=None,
            )
        except psycopg.Error as exc:
            raise server_error(exc, location, secrets, timeout_s) from None

    @staticmethod
    def _describe(conn: psycopg.Connection[Any], schema: str) -> tuple[str, str, str | None] | None:
        """(pgvector's version, the schema it lives in, this store's schema version), or
        None when pgvector or the store's tables are not there yet."""
        try:
            row = conn.execute(
                f"SELECT e.extversion, n.nspname, (SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version') "
                "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return (row[0], row[1], row[2]) if row else None

    @classmethod
    def _migrate(cls, conn: psycopg.Connection[Any], schema: str, location: str) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"semcache migrate {schema}",))
            ext = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                               "WHERE e.extname = 'vector'").fetchone()
            if ext is None:
                if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone() is None:
                    raise StoreError(f"the cache store {location} has no pgvector: ask the database's administrator "
                                     "to install it (https://github.com/pgvector/pgvector), then run "
                                     "CREATE EXTENSION vector in this database")
                try:
                    with conn.transaction():
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.errors.InsufficientPrivilege:
                    raise StoreError(f"this role may not create the pgvector extension in {location}: ask the "
                                     "database's administrator to run CREATE EXTENSION vector in this database "
                                     "(once; semcache needs no superuser after that)") from None
                ext = _one(conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                   "ON n.oid = e.extnamespace WHERE e.extname = 'vector'"))
            try:  # created only when missing: even IF NOT EXISTS needs the privilege to create one
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
                    with conn.transaction():
                        conn.execute(f'CREATE SCHEMA "{schema}"')
            except psycopg.errors.InsufficientPrivilege:
                raise StoreError(f"this role may not create the schema {schema} in {location}: ask the database's "
                                 f"administrator to run CREATE SCHEMA {schema} AUTHORIZATION <this role>, or GRANT "
                                 "CREATE ON DATABASE to it") from None
            conn.execute(f'CREATE TABLE IF NOT EXISTS "{schema}".meta (key text PRIMARY KEY, value text NOT NULL)')
            row = conn.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                return  # refused by the caller, untouched
            vector = '"' + ext[0].replace('"', '""') + '".vector'
            for number, migration in enumerate(_MIGRATIONS[version:], start=version + 1):
                for step in migration(f'"{schema}"', vector):
                    conn.execute(step) if isinstance(step, str) else step(conn)
                conn.execute(f"INSERT INTO \"{schema}\".meta VALUES ('schema_version', %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(number),))

    def reopen(self) -> PostgresStore:
        conn = self._connect(self._conninfo, self.location, self.timeout_s, self.secrets)
        store = PostgresStore(conn, self._conninfo, self.schema, self.location, self.timeout_s, self.pgvector,
                              self._vector_schema, self.secrets)
        store.clock = self.clock
        store._measure_skew()
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ask path ------------------------------------------------------------------

    @_reconnecting
    def find_exact(self, scope: str, key: str) -> Entry | None:
        row = self._conn.execute(f"SELECT {self._entry_columns} FROM {self._s}.entries "
                                 "WHERE scope = %s AND exact_key = %s", (scope, key)).fetchone()
        return Entry.from_stored(row) if row else None

    @_reconnecting
    def get(self, entry_id: int) -> Entry | None:
        row = self._conn.execute(f"SELECT {self._entry_columns} FROM {self._s}.entries WHERE id = %s",
                                 (entry_id,)).fetchone()
        return Entry.from_stored(row) if row else None

    @_reconnecting
    def nearest(self, scope: str, embed_model: str, vector: Sequence[float], k: int,
                directions: Sequence[Sequence[float]] = ()) -> list[Neighbour]:
        found = self._nearest(scope, embed_model, vector, k)
        if not directions or not found:
            return [Neighbour(entry_id, cosine) for entry_id, cosine in found]
        # The projections of the k found, computed by the server (the vectors stay there).
        products = ", ".join(f"-(embedding {self._product} %s::{self._vector})" for _ in directions)
        rows = {r[0]: tuple(float(x) for x in r[1:]) for r in self._conn.execute(
            f"SELECT entry_id, {products} FROM {self._s}.entry_vectors WHERE entry_id = ANY(%s)",
            [*(_vector_text(d) for d in directions), [entry_id for entry_id, _ in found]])}
        return [Neighbour(entry_id, cosine, rows[entry_id]) for entry_id, cosine in found if entry_id in rows]

    def _nearest(self, scope: str, embed_model: str, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        dims, text = len(vector), _vector_text(vector)
        size = _one(self._conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {self._s}.entry_vectors WHERE embed_model = %s AND dims = %s "
            "AND scope = %s LIMIT %s) AS scope_rows", (embed_model, dims, scope, EXACT_UP_TO + 1),
        ))[0]
        if size == 0:
            return []
        if size > EXACT_UP_TO:
            found = self._by_codes(scope, embed_model, vector, text, k)
            if len(found) >= min(k, size):
                return found
        rows = self._conn.execute(
            f"SELECT entry_id, 1 - (embedding {self._distance} %s::{self._vector}) FROM {self._s}.entry_vectors "
            f"WHERE embed_model = %s AND dims = %s AND scope = %s "
            f"ORDER BY embedding {self._distance} %s::{self._vector}, entry_id LIMIT %s",
            (text, embed_model, dims, scope, text, k),
        ).fetchall()
        return [(int(r[0]), min(1.0, float(r[1]))) for r in rows]

    def _by_codes(self, scope: str, embed_model: str, vector: Sequence[float], text: str,
                  k: int) -> list[tuple[int, float]]:
        """The search above EXACT_UP_TO: one simple-protocol round trip, with jit off for
        it (a scan this size never repays compiling)."""
        with self._conn.cursor() as cursor:
            statement = f"SET LOCAL jit = off; {self._code_search(scope, embed_model, vector, text, k)}"
            cursor.execute(statement.encode(self._conn.info.encoding))  # as psycopg would encode a str
            cursor.nextset()  # the SET's result first, then the rows
            rows = cursor.fetchall()
        return [(int(r[0]), min(1.0, float(r[1]))) for r in rows]

    def _code_search(self, scope: str, embed_model: str, vector: Sequence[float], text: str, k: int) -> str:
        """The statement: the group's CODE_CANDIDATES nearest sign codes by Hamming
        distance, their vectors ranked exactly; values inlined as quoted literals.

        The scan keeps only the codes within the sampled radius, so the rest never reach
        its sort. When fewer than CODE_CANDIDATES lie within, the same statement scans
        again without it, so the candidates are always those of a full scan. That takes
        10 of the 255 nearest codes in a 1% sample: odds of about 1 in 2,500."""
        from psycopg import sql

        dims, codes = len(vector), f"{self._s}.entry_codes"
        code = sql.Literal(_code_text(vector)).as_string(self._conn)
        literal = {name: sql.Literal(value).as_string(self._conn)
                   for name, value in (("model", embed_model), ("scope", scope), ("q", text))}
        # pgvector's Hamming distance (0.7+) is a third faster than PostgreSQL's bit_count of an XOR
        hamming = (f"code OPERATOR({self._vec_schema}.<~>) {code}::bit varying" if self.pgvector >= (0, 7)
                   else f"bit_count(code # {code}::bit varying)")
        group = f"grp = {_group_key(embed_model, dims, scope):d}"
        radius = (f"coalesce((SELECT {hamming} FROM {codes} TABLESAMPLE SYSTEM ({RADIUS_SAMPLE_PERCENT:f}) "
                  f"WHERE {group} ORDER BY 1 OFFSET {RADIUS_RANK - 1:d} LIMIT 1), {dims:d})")  # no sample: no cut

        def nearest(within: str) -> str:
            return f"SELECT entry_id FROM {codes} WHERE {group}{within} ORDER BY {hamming} LIMIT {CODE_CANDIDATES:d}"

        found = "(SELECT count(*) FROM near)"
        return (f"WITH near AS MATERIALIZED ({nearest(f' AND {hamming} <= {radius}')}), "
                f"candidates AS (SELECT entry_id FROM near WHERE {found} = {CODE_CANDIDATES:d} "
                f"UNION ALL SELECT entry_id FROM ({nearest('')}) AS wide WHERE {found} < {CODE_CANDIDATES:d}) "
                f"SELECT v.entry_id, 1 - (v.embedding {self._distance} {literal['q']}::{self._vector}) "
                f"FROM candidates JOIN {self._s}.entry_vectors AS v USING (entry_id) "
                f"WHERE v.embed_model = {literal['model']} AND v.dims = {dims:d} AND v.scope = {literal['scope']} "
                f"ORDER BY v.embedding {self._distance} {literal['q']}::{self._vector}, v.entry_id LIMIT {int(k):d}")

    # -- the calibrated scale ----------------------------------------------------------

    @_reconnecting
    def calibration(self, embed_model: str, dims: int) -> Calibration | None:
        row = self._conn.execute(f"SELECT {', '.join(CALIBRATION_COLUMNS)} FROM {self._s}.calibrations "
                                 "WHERE embed_model = %s AND dims = %s", (embed_model, dims)).fetchone()
        return calibration_from_columns(row) if row else None

    def save_calibration(self, embed_model: str, calibration: Calibration) -> None:
        changed = ", ".join(f"{c} = excluded.{c}" for c in CALIBRATION_COLUMNS[1:])
        self._conn.execute(
            f"INSERT INTO {self._s}.calibrations (embed_model, {', '.join(CALIBRATION_COLUMNS)}) "
            f"VALUES (%s{', %s' * len(CALIBRATION_COLUMNS)}) ON CONFLICT (embed_model, dims) DO UPDATE SET {changed}",
            (embed_model, *calibration_columns(calibration)))

    def advance_calibration(self, embed_model: str, calibration: Calibration, replacing: Calibration | None) -> bool:
        values = (embed_model, *calibration_columns(calibration))
        if replacing is None:
            return self._conn.execute(
                f"INSERT INTO {self._s}.calibrations (embed_model, {', '.join(CALIBRATION_COLUMNS)}) "
                f"VALUES (%s{', %s' * len(CALIBRATION_COLUMNS)}) ON CONFLICT DO NOTHING", values).rowcount == 1
        changed = ", ".join(f"{c} = %s" for c in CALIBRATION_COLUMNS[1:])
        return self._conn.execute(
            f"UPDATE {self._s}.calibrations SET {changed} WHERE embed_model = %s AND dims = %s "
            "AND vectors = %s AND checked_at = %s",
            (*values[2:], embed_model, calibration.dims, replacing.vectors, replacing.checked_at)).rowcount == 1

    @_reconnecting
    def reference_vectors(self, embed_model: str, dims: int) -> tuple[str, bytes] | None:
        row = self._conn.execute(f"SELECT fingerprint, vectors FROM {self._s}.reference_vectors "
                                 "WHERE embed_model = %s AND dims = %s", (embed_model, dims)).fetchone()
        return (row[0], bytes(row[1])) if row else None

    @_reconnecting
    def save_reference_vectors(self, embed_model: str, dims: int, fingerprint: str, blob: bytes) -> None:
        self._conn.execute(f"INSERT INTO {self._s}.reference_vectors VALUES (%s, %s, %s, %s) ON CONFLICT "
                           "(embed_model, dims) DO UPDATE SET fingerprint = excluded.fingerprint, "
                           "vectors = excluded.vectors", (embed_model, dims, fingerprint, blob))

    @_reconnecting
    def top_entry_id(self) -> int:
        return int(_one(self._conn.execute(f"SELECT coalesce(max(id), 0) FROM {self._s}.entries"))[0])

    def vector_groups(self) -> list[VectorGroup]:
        return [VectorGroup(r[0], r[1], int(r[2]), int(r[3])) for r in self._conn.execute(
            f"SELECT embed_model, dims, count(*), max(entry_id) FROM {self._s}.entry_vectors GROUP BY 1, 2 ORDER BY 1, 2")]

    def vector_count(self, embed_model: str, dims: int) -> int:
        return int(_one(self._conn.execute(f"SELECT count(*) FROM {self._s}.entry_vectors WHERE embed_model = %s "
                                           "AND dims = %s", (embed_model, dims)))[0])

    def sample_vectors(self, embed_model: str, dims: int, n: int) -> list[Sequence[float]]:
        return [_parse_vector(r[0]) for r in self._conn.execute(
            f"SELECT embedding::text FROM {self._s}.entry_vectors WHERE embed_model = %s AND dims = %s "
            "ORDER BY random() LIMIT %s", (embed_model, dims, n))]

    @_reconnecting
    def store_answer(self, new: NewEntry, request: LogRow | None = None, claim_owner: str | None = None) -> int:
        s = self._s
        params: dict[str, Any] = dict(zip(STORED_FIELDS, new.stored_values(), strict=True))
        steps = []
        if claim_owner is not None:
            params["owner"] = claim_owner
            steps.append(f"released AS (DELETE FROM {s}.claims WHERE scope = %(scope)s "
                         "AND exact_key = %(exact_key)s AND owner = %(owner)s)")
        updates = ", ".join("hits = 0" if f == "hits" else "last_hit_at = NULL" if f == "last_hit_at"
                            else f"{f} = excluded.{f}" for f in STORED_FIELDS if f not in ("scope", "exact_key"))
        steps.append(f"stored AS (INSERT INTO {s}.entries ({', '.join(STORED_FIELDS)}) "
                     f"VALUES ({', '.join(f'%({f})s' for f in STORED_FIELDS)}) "
                     f"ON CONFLICT (scope, exact_key) DO UPDATE SET {updates} RETURNING id)")
        if new.vector is not None:
            params["vector"] = _vector_text(new.vector)
            params["grp"] = _group_key(new.embed_model or "", len(new.vector), new.scope)
            params["code"] = _code_text(new.vector)
            steps.append(f"vectored AS (INSERT INTO {s}.entry_vectors (entry_id, scope, embed_model, dims, embedding) "
                         f"SELECT id, %(scope)s, %(embed_model)s, %(dims)s, %(vector)s::{self._vector} FROM stored "
                         "ON CONFLICT (entry_id) DO UPDATE SET scope = excluded.scope, "
                         "embed_model = excluded.embed_model, dims = excluded.dims, embedding = excluded.embedding)")
            steps.append(f"coded AS (INSERT INTO {s}.entry_codes (entry_id, grp, code) "
                         "SELECT id, %(grp)s, %(code)s::bit varying FROM stored "
                         "ON CONFLICT (entry_id) DO UPDATE SET grp = excluded.grp, code = excluded.code)")
        else:  # the old answer's vector belongs to the old row state
            steps.append(f"unvectored AS (DELETE FROM {s}.entry_vectors WHERE entry_id IN (SELECT id FROM stored))")
        if request is not None:
            for name, value in zip(LOG_FIELDS, request[:-1], strict=True):
                params[f"log_{name}"] = value
            columns = [name for name in LOG_FIELDS if name != "entry_id"]
            steps.append(f"logged AS (INSERT INTO {s}.requests ({', '.join(columns)}, entry_id) "
                         f"SELECT {', '.join(f'%(log_{c})s' for c in columns)}, id FROM stored)")
        row = _one(self._conn.execute(f"WITH {', '.join(steps)} SELECT id FROM stored", params))
        return int(row[0])

    def import_entries(self, rows: list[tuple[Entry, Sequence[float] | None]]) -> int:
        s = self._s
        updates = ", ".join(f"{f} = excluded.{f}" for f in STORED_FIELDS if f not in ("scope", "exact_key"))
        insert = (f"INSERT INTO {s}.entries ({', '.join(STORED_FIELDS)}) VALUES ({', '.join('%s' for _ in STORED_FIELDS)}) "
                  f"ON CONFLICT (scope, exact_key) DO UPDATE SET {updates} "
                  f"WHERE excluded.created_at > {s}.entries.created_at RETURNING id")
        written = 0
        with self._conn.transaction():
            for entry, vector in rows:
                row = self._conn.execute(insert, entry.stored_values()).fetchone()
                if row is None:
                    continue
                written += 1
                if vector is None:
                    self._conn.execute(f"DELETE FROM {s}.entry_vectors WHERE entry_id = %s", (row[0],))
                else:
                    self._conn.execute(
                        f"INSERT INTO {s}.entry_vectors (entry_id, scope, embed_model, dims, embedding) "
                        f"VALUES (%s, %s, %s, %s, %s::{self._vector}) ON CONFLICT (entry_id) DO UPDATE SET "
                        "scope = excluded.scope, embed_model = excluded.embed_model, dims = excluded.dims, "
                        "embedding = excluded.embedding",
                        (row[0], entry.scope, entry.embed_model, len(vector), _vector_text(vector)))
                    self._conn.execute(
                        f"INSERT INTO {s}.entry_codes (entry_id, grp, code) VALUES (%s, %s, %s::bit varying) "
                        "ON CONFLICT (entry_id) DO UPDATE SET grp = excluded.grp, code = excluded.code",
                        (row[0], _group_key(entry.embed_model or "", len(vector), entry.scope), _code_text(vector)))
        return written

    def store_many(self, news: Iterable[NewEntry]) -> list[int]:
        """COPY in one transaction, a chunk at a time so a million answers stream through
        (vectors in pgvector's binary form, then their sign codes)."""
        from pgvector import Vector
        from pgvector.psycopg import register_vector

        s = self._s
        ids: list[int] = []
        iterator = iter(news)
        chunks = iter(lambda: list(itertools.islice(iterator, COPY_CHUNK)), [])
        with self._conn.transaction():
            register_vector(self._conn)
            for chunk in chunks:
                chunk_ids = [r[0] for r in self._conn.execute(
                    f"SELECT nextval(pg_get_serial_sequence('{s}.entries', 'id')) FROM generate_series(1, %s)",
                    (len(chunk),))]
                with self._conn.cursor() as cursor:
                    with cursor.copy(f"COPY {s}.entries (id, {', '.join(STORED_FIELDS)}) FROM STDIN") as copy:
                        for entry_id, new in zip(chunk_ids, chunk, strict=True):
                            copy.write_row((entry_id, *new.stored_values()))
                    with cursor.copy(f"COPY {s}.entry_vectors (entry_id, scope, embed_model, dims, embedding) "
                                     "FROM STDIN WITH (FORMAT BINARY)") as copy:
                        copy.set_types(["int8", "text", "text", "int4", "vector"])
                        for entry_id, new in zip(chunk_ids, chunk, strict=True):
                            if new.vector is not None:
                                copy.write_row((entry_id, new.scope, new.embed_model, len(new.vector),
                                                Vector(list(new.vector))))
                    with cursor.copy(f"COPY {s}.entry_codes (entry_id, grp, code) FROM STDIN") as copy:
                        for entry_id, new in zip(chunk_ids, chunk, strict=True):
                            if new.vector is not None:
                                copy.write_row((entry_id, _group_key(new.embed_model or "", len(new.vector),
                                                                     new.scope), _code_text(new.vector)))
                ids += chunk_ids
        return ids

    @_reconnecting
    def record_hit(self, entry_id: int, now: float, request: LogRow) -> None:
        self._conn.execute(
            f"WITH hit AS (UPDATE {self._s}.entries SET hits = hits + 1, last_hit_at = %s WHERE id = %s) "
            + self._insert_request, (now, entry_id, *request[:-1]))

    @_reconnecting
    def record_hits(self, hits: Sequence[tuple[int, float, LogRow]]) -> None:
        with self._conn.transaction(), self._conn.cursor() as cursor:
            cursor.executemany(f"UPDATE {self._s}.entries SET hits = hits + 1, last_hit_at = %s WHERE id = %s",
                               [(now, entry_id) for entry_id, now, _ in hits])
            cursor.executemany(self._insert_request, [request[:-1] for _, _, request in hits])

    @_reconnecting
    def log_request(self, request: LogRow) -> None:
        self._conn.execute(self._insert_request, request[:-1])

    # -- single-flight claims ----------------------------------------------------------

    @_reconnecting
    def take_claim(self, scope: str, key: str, owner: str, host: str, pid: int, lease_s: float) -> bool:
        row = self._conn.execute(
            f"INSERT INTO {self._s}.claims (scope, exact_key, owner, host, pid, claimed_at, expires_at) "
            f"VALUES (%s, %s, %s, %s, %s, {_NOW}, {_NOW} + %s) ON CONFLICT (scope, exact_key) DO UPDATE SET "
            "owner = excluded.owner, host = excluded.host, pid = excluded.pid, claimed_at = excluded.claimed_at, "
            f"expires_at = excluded.expires_at WHERE {self._s}.claims.expires_at <= excluded.claimed_at "
            "RETURNING owner", (scope, key, owner, host, pid, lease_s),
        ).fetchone()
        return row is not None

    @_reconnecting
    def renew_claim(self, scope: str, key: str, owner: str, lease_s: float) -> None:
        self._conn.execute(f"UPDATE {self._s}.claims SET expires_at = {_NOW} + %s "
                           "WHERE scope = %s AND exact_key = %s AND owner = %s", (lease_s, scope, key, owner))

    @_reconnecting
    def release_claim(self, scope: str, key: str, owner: str) -> None:
        self._conn.execute(f"DELETE FROM {self._s}.claims WHERE scope = %s AND exact_key = %s AND owner = %s",
                           (scope, key, owner))

    # -- listing and selecting ---------------------------------------------------------

    def entries(self, selector: Selector, now: float, sort: str = "newest", limit: int = 0,
                with_vectors: bool = False, damaged: Callable[[UnreadableEntry], None] | None = None,
                ) -> Iterator[tuple[Entry, Sequence[float] | None]]:
        where, params = _where(selector, now)
        vector = (f", (SELECT embedding::text FROM {self._s}.entry_vectors v WHERE v.entry_id = e.id)"
                  if with_vectors else ", NULL")
        sql = f"SELECT {self._entry_columns}{vector} FROM {self._s}.entries e WHERE {where} ORDER BY {_SORTS[sort]}"
        if limit > 0:
            sql += " LIMIT %s"
            params.append(limit)
        with self._conn.transaction(), self._conn.cursor(name="semcache_entries") as cursor:
            cursor.itersize = 500  # streamed: a large cache is never held in memory
            cursor.execute(sql, params)
            for row in cursor:
                entry = Entry.decode(row[:-1], damaged)
                if entry is not None:
                    yield entry, _parse_vector(row[-1]) if row[-1] is not None else None

    def vector_of(self, entry_id: int) -> Sequence[float] | None:
        row = self._conn.execute(f"SELECT embedding::text FROM {self._s}.entry_vectors WHERE entry_id = %s",
                                 (entry_id,)).fetchone()
        return _parse_vector(row[0]) if row else None

    def count(self) -> int:
        return int(_one(self._conn.execute(f"SELECT count(*) FROM {self._s}.entries"))[0])

    def select_ids(self, selector: Selector, now: float) -> list[int]:
        where, params = _where(selector, now)
        return [r[0] for r in self._conn.execute(f"SELECT id FROM {self._s}.entries WHERE {where} ORDER BY id",
                                                 params)]

    def lru_ids(self) -> list[int]:
        return [r[0] for r in self._conn.execute(
            f"SELECT id FROM {self._s}.entries ORDER BY coalesce(last_hit_at, created_at) DESC, created_at DESC, "
            "id DESC")]

    def delete(self, ids: list[int], recheck: Selector, now: float) -> int:
        where, params = _where(recheck, now)
        deleted = 0
        for start in range(0, len(ids), DELETE_BATCH):
            cursor = self._conn.execute(f"DELETE FROM {self._s}.entries WHERE id = ANY(%s) AND ({where})",
                                        [ids[start:start + DELETE_BATCH], *params])
            deleted += cursor.rowcount
        return deleted

    def delete_log_before(self, at: float) -> int:
        return int(self._conn.execute(f"DELETE FROM {self._s}.requests WHERE at < %s", (at,)).rowcount)

    def delete_log_of(self, selector: Selector, entry_ids: Sequence[int], before: float,
                      dry_run: bool = False) -> int:
        where, params = _log_where(selector)
        where = f"({where}) OR (at <= %s AND entry_id = ANY(%s))"
        if dry_run:
            return int(_one(self._conn.execute(f"SELECT count(*) FROM {self._s}.requests WHERE {where}",
                                               [*params, before, list(entry_ids)]))[0])
        return int(self._conn.execute(f"DELETE FROM {self._s}.requests WHERE {where}",
                                      [*params, before, list(entry_ids)]).rowcount)

    def count_log_before(self, at: float) -> int:
        return int(_one(self._conn.execute(f"SELECT count(*) FROM {self._s}.requests WHERE at < %s", (at,)))[0])

    def request_log(self, since: float | None = None) -> Iterator[LogRow]:
        window, params = _window(since)
        with self._conn.transaction(), self._conn.cursor(name="semcache_log") as cursor:
            cursor.itersize = 1000
            cursor.execute(f"SELECT {', '.join(LOG_FIELDS)}, id FROM {self._s}.requests WHERE {window} "
                           "ORDER BY at, id", params)
            for row in cursor:
                yield LogRow(*row)

    # -- stats -------------------------------------------------------------------------

    def entry_counts(self, now: float) -> EntryCounts:
        s = self._s
        total, expired, oldest, newest = _one(self._conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE expires_at IS NOT NULL AND expires_at <= %s), "
            f"min(created_at), max(created_at) FROM {s}.entries", (now,)))

        def by(column: str) -> dict[str, int]:
            return {name: int(n) for name, n in self._conn.execute(
                f"SELECT coalesce({column}, '(none)'), count(*) FROM {s}.entries GROUP BY 1 ORDER BY 2 DESC, 1")}

        return EntryCounts(int(total), int(expired), oldest, newest, by("namespace"), by("model"), by("embed_model"))

    def request_counts(self, since: float | None) -> RequestCounts:
        window, params = _window(since)
        s, conn = self._s, self._conn
        by_path = {p: int(n) for p, n in conn.execute(
            f"SELECT path, count(*) FROM {s}.requests WHERE {window} GROUP BY path", params)}
        misses = {r: int(n) for r, n in conn.execute(
            f"SELECT coalesce(miss_reason, %s), count(*) FROM {s}.requests WHERE {window} "
            "AND path IN ('model', 'miss') AND coalesce(miss_reason, '') != %s GROUP BY 1 ORDER BY 2 DESC, 1",
            [policy.NO_MATCH, *params, policy.BYPASS])}
        bypasses = _one(conn.execute(f"SELECT count(*) FROM {s}.requests WHERE {window} AND path IN ('model', 'miss') "
                                "AND miss_reason = %s", [*params, policy.BYPASS]))[0]
        saved_s, saved_tokens = _one(conn.execute(
            f"SELECT coalesce(sum(saved_s), 0), coalesce(sum(saved_tokens), 0) FROM {s}.requests "
            f"WHERE {window} AND path IN ('exact', 'semantic')", params))
        latencies: dict[str, list[float]] = {}
        for path, latency in conn.execute(
                f"SELECT path, latency_ms FROM {s}.requests WHERE {window} AND latency_ms IS NOT NULL "
                "ORDER BY path, latency_ms", params):
            latencies.setdefault(path, []).append(latency)
        return RequestCounts(by_path, misses, int(bypasses), float(saved_s), int(saved_tokens), latencies)

    def similarity_samples(self, since: float | None, low: float, threshold: float) -> list[tuple[str, float]]:
        window, params = _window(since)
        return [(r[0], r[1]) for r in self._conn.execute(
            f"SELECT path, similarity FROM {self._s}.requests WHERE {window} AND similarity >= %s AND ("
            "path = 'semantic' OR (path IN ('model', 'miss') AND coalesce(miss_reason, '') = %s "
            "AND similarity < %s))", [*params, low, policy.NO_MATCH, threshold])]

    def top_entries(self, limit: int) -> list[TopEntry]:
        return [TopEntry(*r) for r in self._conn.execute(
            f"SELECT id, hits, query FROM {self._s}.entries WHERE hits > 0 ORDER BY hits DESC, id LIMIT %s", (limit,))]

    # -- size and maintenance ----------------------------------------------------------

    def _tables(self) -> list[str]:
        return [f"{self._s}.{t}" for t in ("entries", "entry_vectors", "entry_codes", "requests", "claims", "meta",
                                           "calibrations")]

    def disk_bytes(self) -> int:
        """Every table of the store with its indexes and TOAST, as the server holds them."""
        return int(_one(self._conn.execute(
            "SELECT " + " + ".join(f"pg_total_relation_size('{t}')" for t in self._tables())))[0])

    def used_bytes(self) -> int:
        """The live rows as stored (TOAST included, indexes not): what a DELETE frees for
        reuse. The tables' files themselves shrink only with VACUUM FULL. Each entry
        counted as entry_sizes() counts it (with its vector and sign code), so what a
        purge plans to free is what it frees."""
        return sum(size for _, size in self.entry_sizes()) + self.log_bytes()

    def entry_sizes(self) -> list[tuple[int, int]]:
        return [(r[0], int(r[1])) for r in self._conn.execute(
            f"SELECT e.id, pg_column_size(e.*) + {ROW_OVERHEAD} + coalesce(pg_column_size(v.*) + {ROW_OVERHEAD}, 0) "
            f"+ coalesce(pg_column_size(c.*) + {ROW_OVERHEAD}, 0) "
            f"FROM {self._s}.entries e LEFT JOIN {self._s}.entry_vectors v ON v.entry_id = e.id "
            f"LEFT JOIN {self._s}.entry_codes c ON c.entry_id = e.id "
            "ORDER BY coalesce(e.last_hit_at, e.created_at), e.created_at, e.id")]

    def log_bytes(self, before: float | None = None) -> int:
        # Column by column: the size of a whole row (`r.*`) depends on how the plan forms
        # it (inside an aggregate, beside a filter), and a dry run must count what the
        # purge then frees.
        columns = " + ".join(f"coalesce(pg_column_size(r.{name}), 0)" for name in (*LOG_FIELDS, "id"))
        return int(_one(self._conn.execute(
            f"SELECT coalesce(sum({columns} + {ROW_OVERHEAD + 24}), 0) FROM {self._s}.requests r "
            "WHERE %s::double precision IS NULL OR r.at < %s", (before, before)))[0])

    def compact(self) -> None:
        """Nothing to do: the server reclaims deleted rows when it vacuums."""

    def vacuum(self) -> None:
        self._conn.execute(f"VACUUM (ANALYZE) {', '.join(self._tables())}")

    def checkpoint(self) -> None:
        """Nothing to do: the server checkpoints its own write-ahead log."""


# A migration's step: a statement, or a function of the connection for what SQL alone
# cannot do (policy's normalisation, say).
_Step = str | Callable[[psycopg.Connection[Any]], object]
_MIGRATIONS: list[Callable[[str, str], Sequence[_Step]]] = []


def _migration(function: Callable[[str, str], Sequence[_Step]]) -> Callable[[str, str], Sequence[_Step]]:
    """A schema version's steps, given the quoted schema and pgvector's type; in order,
    never edited once shipped: a change is a new one."""
    _MIGRATIONS.append(function)
    return function


@_migration
def _m001_initial(s: str, vector: str) -> list[str]:
    return [
        f"""CREATE TABLE {s}.entries (
            id bigserial PRIMARY KEY, scope text NOT NULL, exact_key text NOT NULL, namespace text NOT NULL,
            model text NOT NULL, system text, options text NOT NULL DEFAULT '{{}}', format text, query text NOT NULL,
            response text NOT NULL, embed_model text, dims integer, created_at double precision NOT NULL,
            ttl double precision, expires_at double precision, hits integer NOT NULL DEFAULT 0,
            last_hit_at double precision, prompt_tokens integer, completion_tokens integer,
            generation_s double precision, done_reason text, metadata text,
            UNIQUE (scope, exact_key))""",
        f"CREATE INDEX ON {s}.entries (expires_at)",
        f"CREATE INDEX ON {s}.entries (created_at)",
        f"""CREATE TABLE {s}.entry_vectors (
            entry_id bigint PRIMARY KEY REFERENCES {s}.entries (id) ON DELETE CASCADE, scope text NOT NULL,
            embed_model text NOT NULL, dims integer NOT NULL, embedding {vector} NOT NULL)""",
        # inline, not TOASTed: an exact scan of a scope reads its vectors in place
        f"ALTER TABLE {s}.entry_vectors ALTER COLUMN embedding SET STORAGE MAIN",
        f"CREATE INDEX ON {s}.entry_vectors (embed_model, dims, scope)",
        f"""CREATE TABLE {s}.requests (
            id bigserial PRIMARY KEY, at double precision NOT NULL, path text NOT NULL, namespace text, model text,
            embed_model text, scope text, exact_key text, query text, entry_id bigint, similarity double precision,
            confidence double precision, miss_reason text, latency_ms double precision, saved_s double precision,
            saved_tokens integer, error text)""",
        f"CREATE INDEX ON {s}.requests (at)",
        f"""CREATE TABLE {s}.claims (
            scope text NOT NULL, exact_key text NOT NULL, owner text NOT NULL, host text NOT NULL,
            pid integer NOT NULL, claimed_at double precision NOT NULL, expires_at double precision NOT NULL,
            PRIMARY KEY (scope, exact_key))""",
    ]


def _one(cursor: psycopg.Cursor[Any]) -> Any:
    """The row of a statement that always returns one (an aggregate, a RETURNING)."""
    row = cursor.fetchone()
    if row is None:
        raise StoreError("the PostgreSQL server returned no row where one is always due")
    return row


@_migration
def _m002_calibrations(s: str, vector: str) -> list[str]:
    # Each embedding model's calibrated scale (vectors.Calibration), and the raw cosine
    # logged beside the calibrated score (before the scale, the similarity was the
    # cosine). Scales for vectors already stored follow the migration (scales.rebuild_all).
    return [
        f"""CREATE TABLE {s}.calibrations (
            embed_model text NOT NULL, dims integer NOT NULL, vectors integer NOT NULL, checked_at bigint NOT NULL,
            directions bytea NOT NULL, offsets bytea NOT NULL, median double precision NOT NULL,
            spread double precision NOT NULL, effective_dims double precision NOT NULL,
            identical double precision NOT NULL, PRIMARY KEY (embed_model, dims))""",
        f"ALTER TABLE {s}.requests ADD COLUMN cosine double precision",
        f"UPDATE {s}.requests SET cosine = similarity",
    ]


@_migration
def _m003_sign_codes(s: str, vector: str) -> list[str]:
    # The sign-code side table the search above EXACT_UP_TO scans (PostgresStore._by_codes),
    # filled from the stored vectors: with pgvector's binary_quantize (0.7+; the same bits:
    # 1 where a component is positive), else in plain SQL (~80 s a million vectors), and
    # the HNSW indexes it replaces dropped.
    name = s[1:-1]  # the schema's name, checked at open: lower-case letters, digits, _
    functions = vector.rsplit(".", 1)[0]  # pgvector's schema, quoted
    fill = (f"INSERT INTO {s}.entry_codes (entry_id, grp, code) SELECT v.entry_id, "
            "('x' || substr(md5(v.embed_model || '/' || v.dims || '/' || v.scope), 1, 16))::bit(64)::bigint, {code} "
            f"FROM {s}.entry_vectors AS v")
    quantized = fill.format(code=f"{functions}.binary_quantize(v.embedding)::bit varying")
    spelled = fill.format(code="(SELECT string_agg(CASE WHEN x > 0 THEN '1' ELSE '0' END, '' ORDER BY i) "
                               "FROM unnest(v.embedding::real[]) WITH ORDINALITY AS u(x, i))::bit varying")
    return [
        f"""CREATE TABLE {s}.entry_codes (
            entry_id bigint PRIMARY KEY REFERENCES {s}.entry_vectors (entry_id) ON DELETE CASCADE,
            grp bigint NOT NULL, code bit varying NOT NULL)""",
        f"""DO $fill$ BEGIN
            IF to_regprocedure($n${functions}.binary_quantize({vector})$n$) IS NOT NULL THEN
                EXECUTE $q${quantized}$q$;
            ELSE
                EXECUTE $q${spelled}$q$;
            END IF; END $fill$""",
        f"CREATE INDEX ON {s}.entry_codes (grp)",
        f"ANALYZE {s}.entry_codes",  # a plan for the first lookups, before autovacuum gets to it
        f"""DO $drop$ DECLARE r record; BEGIN
            FOR r IN SELECT indexname FROM pg_indexes WHERE schemaname = '{name}'
                     AND indexname LIKE 'entry_vectors_hnsw_%' LOOP
                EXECUTE format('DROP INDEX %I.%I', '{name}', r.indexname);
            END LOOP; END $drop$""",
    ]


@_migration
def _m004_padded_codes(s: str, vector: str) -> list[str]:
    # Codes of fewer than CODE_BITS_AT_LEAST bits padded with zeros (as _code_text writes
    # them), in one rewrite of the table: stored with a four-byte header, a code is
    # compared in place. And padded on the way in: a process of the build before, still
    # running through an upgrade, writes short codes, and one of those in a scope would
    # make every code scan of it fail on unequal lengths.
    def padded(code: str) -> str:
        return f"{code} || repeat('0', {CODE_BITS_AT_LEAST:d} - length({code}))::bit varying"

    return [
        f"ALTER TABLE {s}.entry_codes ALTER COLUMN code TYPE bit varying USING CASE "
        f"WHEN length(code) < {CODE_BITS_AT_LEAST:d} THEN {padded('code')} ELSE code END",
        f"""CREATE OR REPLACE FUNCTION {s}.padded_code() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN NEW.code := {padded('NEW.code')}; RETURN NEW; END $f$""",
        f"CREATE TRIGGER padded_code BEFORE INSERT OR UPDATE OF code ON {s}.entry_codes FOR EACH ROW "
        f"WHEN (length(NEW.code) < {CODE_BITS_AT_LEAST:d}) EXECUTE FUNCTION {s}.padded_code()",
    ]


@_migration
def _m005_reference_vectors(s: str, vector: str) -> list[str]:
    # (IF NOT EXISTS: a store whose version was set back, as the tests do, runs it again)
    # The reference questions' vectors of each embedding model (one row: all or none),
    # the cold start of its scale; and what each scale was made from. Apart from
    # entries: never served, listed or counted as one.
    return [
        f"""CREATE TABLE IF NOT EXISTS {s}.reference_vectors (
            embed_model text NOT NULL, dims integer NOT NULL, fingerprint text NOT NULL, vectors bytea NOT NULL,
            PRIMARY KEY (embed_model, dims))""",
        f"ALTER TABLE {s}.calibrations ADD COLUMN IF NOT EXISTS reference integer NOT NULL DEFAULT 0",
        f"ALTER TABLE {s}.calibrations ADD COLUMN IF NOT EXISTS distinct_vectors integer NOT NULL DEFAULT 0",
    ]


@_migration
def _m006_exact_keys(s: str, vector: str) -> list[_Step]:
    # Exact keys made again from the stored questions under the normalisation that merges
    # only what cannot change the question (storage/rekey.py says how), in Python: the
    # server has no casefold of Python's. The request log keeps the keys its requests
    # were made with; claims are moments, and run out.
    from semcache_cli.storage import rekey

    return [lambda conn: rekey.run(conn, f"{s}.entries", "%s")]


def _where(selector: Selector, now: float) -> tuple[str, list[Any]]:
    """The selector as a WHERE clause of fixed fragments; every user value is a bound
    parameter. An empty selector matches every entry."""
    clauses: list[str] = []
    params: list[Any] = []
    if selector.expired:
        clauses.append("expires_at IS NOT NULL AND expires_at <= %s")
        params.append(now)
    if selector.live:
        clauses.append("expires_at IS NULL OR expires_at > %s")
        params.append(now)
    if selector.older_than is not None:
        clauses.append("created_at < %s")
        params.append(now - selector.older_than)
    for column in ("namespace", "model", "embed_model"):
        if getattr(selector, column):
            clauses.append(f"{column} = %s")
            params.append(getattr(selector, column))
    if selector.ids:
        clauses.append("id = ANY(%s)")
        params.append(list(selector.ids))
    if selector.grep:
        clauses.append("(strpos(lower(query), lower(%s)) > 0 OR strpos(lower(response), lower(%s)) > 0)")
        params.extend([selector.grep, selector.grep])
    if selector.unused_since is not None:
        clauses.append("coalesce(last_hit_at, created_at) <= %s")
        params.append(selector.unused_since)
    return " AND ".join(f"({c})" for c in clauses) or "TRUE", params


def _log_where(selector: Selector) -> tuple[str, list[Any]]:
    """The request-log rows a content selector names by their own fields (as the SQLite
    backend's _log_where)."""
    clauses: list[str] = []
    params: list[Any] = []
    if selector.namespace:
        clauses.append("namespace = %s")
        params.append(selector.namespace)
    for column in ("model", "embed_model"):
        if getattr(selector, column):
            clauses.append(f"(lower({column}) = %s OR lower({column}) || ':latest' = %s)")
            params.extend([getattr(selector, column)] * 2)
    if selector.grep:
        clauses.append("strpos(lower(coalesce(query, '')), lower(%s)) > 0")
        params.append(selector.grep)
    if selector.ids:
        clauses.append("entry_id = ANY(%s)")
        params.append(list(selector.ids))
    return " AND ".join(f"({c})" for c in clauses) or "FALSE", params


def _window(since: float | None) -> tuple[str, list[Any]]:
    return ("at >= %s", [since]) if since is not None else ("TRUE", [])
