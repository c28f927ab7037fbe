"""Analyst SQL over the profile tables: the view catalogue, its translation, and engines.

Input: the Delta tables under ``settings.warehouse_root`` (bronze.events,
silver.user_behaviour, gold.user_profiles, ...) and the curated views in ``sql/*.sql``,
each written once in Spark SQL (one view per file, a ``-- grain:`` comment first).
Output: SQLAlchemy engines on which those tables and views can be queried, and
read-only query execution returning columns and rows.

Engines:
- embedded (default, no server): DuckDB over the *active* Parquet files of each Delta
  table, listed by delta-rs (DuckDB's own ``delta`` extension needs a download, which an
  offline machine cannot do). The views live in a small DuckDB catalog file rebuilt
  whenever a table's Delta version changes, opened read-only, with file access limited
  to exactly those files and the configuration locked.
- server: Spark's Thrift JDBC/ODBC server (HiveServer2) from the pyspark wheel, with
  the same views registered in Spark SQL and a guard refusing every write
  (``sql/thrift/ReadOnlyThriftServer.java``); clients use ``hive://`` (PyHive).
- any other SQLAlchemy URL (Trino, Databricks SQL, ...): views run as their translated
  body, so they work where the tables exist under the same names.

Safety: user text is never pasted into SQL. View names are checked against the
catalogue, filter columns against the view's columns, values are bound parameters,
and every statement is checked to be a read before it reaches an engine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.delta_log import DeltaSnapshot, delta_snapshot, is_local_path
from core.errors import InputError, NotBuiltError, ServiceError
from core.fs import writable_dir
from core.tables import TABLES

if TYPE_CHECKING:
    import sqlalchemy as sa

    from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "sql"
GUARD_SOURCE = SQL_DIR / "thrift" / "ReadOnlyThriftServer.java"
GUARD_CLASS = "persona.sql.ReadOnlyThriftServer"

# The tables analysts see, by the names the views use: every table of the registry.
BASE_TABLES: tuple[str, ...] = tuple(TABLES)

# SQLAlchemy dialect name -> sqlglot dialect.
SQLGLOT_DIALECTS = {
    "duckdb": "duckdb",
    "hive": "spark",
    "databricks": "databricks",
    "trino": "trino",
    "presto": "presto",
    "postgresql": "postgres",
    "mysql": "mysql",
    "sqlite": "sqlite",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
    "clickhouse": "clickhouse",
    "redshift": "redshift",
    "mssql": "tsql",
    "oracle": "oracle",
}


# ---------------------------------------------------------------------------------------
# the catalogue


@dataclasses.dataclass(frozen=True)
class View:
    """One curated view: its name, grain, Spark SQL body and the tables it reads."""

    name: str
    grain: str
    description: str
    sql: str
    tables: tuple[str, ...]

    def translated(self, dialect: str) -> str:
        return translate(self.sql, dialect)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _parse_view(path: Path) -> View:
    import sqlglot
    from sqlglot import exp

    text = path.read_text()
    comments = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("--")]
    grain = next((c.split(":", 1)[1].strip() for c in comments if c.lower().startswith("grain:")), "")
    description = " ".join(c for c in comments if not c.lower().startswith("grain:"))
    tree = sqlglot.parse_one(text, read="spark")
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    tables = sorted(
        {f"{t.db}.{t.name}" for t in tree.find_all(exp.Table) if t.db and t.name not in ctes}
    )
    return View(path.stem, grain, description, text.strip().rstrip(";"), tuple(tables))


@lru_cache(maxsize=4)
def _catalogue(sql_dir: str) -> dict[str, View]:
    views = {}
    for path in sorted(Path(sql_dir).glob("*.sql")):
        view = _parse_view(path)
        views[view.name] = view
    return views


def catalogue(sql_dir: str | os.PathLike | None = None) -> dict[str, View]:
    """Every curated view, by name (``sql/<name>.sql``)."""
    return _catalogue(str(sql_dir or SQL_DIR))


def get_view(name: str, sql_dir: str | os.PathLike | None = None) -> View:
    """The view called ``name``, or an InputError listing the known ones.

    This is the only way a user-given view name reaches SQL: it must be a key of the
    catalogue, which itself only holds lowercase identifiers.
    """
    views = catalogue(sql_dir)
    if name not in views or not _NAME.match(name):
        raise InputError(f"unknown view {name!r}; known views: {', '.join(sorted(views))}")
    return views[name]


def translate(sql: str, dialect: str) -> str:
    """Spark SQL -> ``dialect`` (a sqlglot dialect name), failing on anything unsupported."""
    import sqlglot
    from sqlglot.errors import ErrorLevel

    if dialect == "spark":
        return sql
    out = sqlglot.transpile(sql, read="spark", write=dialect, pretty=True,
                            unsupported_level=ErrorLevel.RAISE)
    return ";\n".join(out)


def translate_from(sql: str, source: str, target: str) -> str:
    """An analyst's query from dialect ``source`` to ``target`` (sqlglot names)."""
    import sqlglot
    from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError

    if source == target:
        return sql
    try:
        return ";\n".join(sqlglot.transpile(sql, read=source, write=target,
                                             unsupported_level=ErrorLevel.RAISE))
    except (ParseError, UnsupportedError, ValueError) as exc:
        raise ValueError(f"cannot translate from {source} to {target}: {str(exc).splitlines()[0]}") from exc


def spark_sql_over_paths(sql: str, paths: dict[str, str]) -> str:
    """The view body with ``layer.table`` replaced by ``delta.`path```: runs in any Spark
    session with Delta, without registering anything in its catalog."""
    import sqlglot
    from sqlglot import exp

    def swap(node):
        if isinstance(node, exp.Table) and node.db and f"{node.db}.{node.name}" in paths:
            return exp.Table(
                this=exp.to_identifier(paths[f"{node.db}.{node.name}"], quoted=True),
                db=exp.to_identifier("delta"),
                alias=node.args.get("alias"),
            )
        return node

    return sqlglot.parse_one(sql, read="spark").transform(swap).sql("spark", pretty=True)


# ---------------------------------------------------------------------------------------
# read-only checks


_READ_STATEMENTS = {"SELECT"}


def check_read_only(sql: str, dialect: str) -> None:
    """Raise InputError unless every statement in ``sql`` only reads.

    DuckDB: its own parser classifies the statements (exact). Other engines: sqlglot,
    rejecting anything it cannot parse as a plain query. The engines enforce it too
    (read-only DuckDB file, the Thrift server's guard); this check gives a clear error
    first and closes the gaps they leave (DuckDB's ``COPY ... TO``, ``SELECT INTO``).
    """
    if not sql.strip():
        raise InputError("empty query")
    if dialect == "duckdb":
        _check_duckdb(sql)
    else:
        _check_sqlglot(sql, dialect)


def _refuse(what: str) -> InputError:
    return InputError(f"read-only access: {what} statements are not allowed (only queries)")


def _check_duckdb(sql: str) -> None:
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"invalid query: {str(exc).splitlines()[0]}") from exc
    if len(statements) > 1:
        raise InputError("one statement at a time, please")
    for stmt in statements:
        kind = stmt.type.name
        if kind == "EXPLAIN":
            # EXPLAIN ANALYZE runs its statement: only allow it around a query.
            inner = re.sub(r"^\s*explain(\s+analyze)?\s+", "", stmt.query, flags=re.I)
            inner_types = [s.type.name for s in duckdb.extract_statements(inner)]
            if inner_types != ["SELECT"]:
                raise _refuse(inner_types[0] if inner_types else "EXPLAIN")
            continue
        if kind not in _READ_STATEMENTS:
            raise _refuse(kind)


def _check_sqlglot(sql: str, dialect: str) -> None:
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as exc:
        raise InputError(f"could not check that the query only reads: {str(exc).splitlines()[0]}") from exc
    if len(statements) > 1:
        raise InputError("one statement at a time, please")
    forbidden = (exp.DML, exp.DDL, exp.Copy, exp.Set, exp.Use, exp.Cache, exp.Uncache,
                 exp.Refresh, exp.TruncateTable, exp.Grant, exp.Revoke, exp.Merge,
                 exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter,
                 exp.LoadData, exp.Into, exp.Pragma, exp.Transaction, exp.Commit,
                 exp.Rollback, exp.Kill, exp.Execute, exp.Analyze, exp.Attach, exp.Detach)
    for stmt in statements:
        if isinstance(stmt, exp.Command):
            keyword = str(stmt.this).upper()
            rest = stmt.expression.name if isinstance(stmt.expression, exp.Literal) else str(stmt.expression or "")
            if keyword in ("SHOW", "DESCRIBE", "DESC"):
                continue
            if keyword == "EXPLAIN":
                # EXPLAIN ANALYZE runs its statement on some engines: that must be a read.
                inner = re.sub(r"^\s*(analyze|extended|formatted|codegen|cost)\s+", "", rest, flags=re.I)
                if inner.strip():
                    _check_sqlglot(inner, dialect)
                continue
            raise _refuse(keyword)
        if not isinstance(stmt, (exp.Query, exp.Describe, exp.Show)):
            raise _refuse(stmt.key.upper())
        for node in stmt.walk():
            if isinstance(node, forbidden) or isinstance(node, exp.Command):
                raise _refuse(node.key.upper())


# ---------------------------------------------------------------------------------------
# Delta tables as delta-rs sees them (core.delta_log)


def table_snapshots(settings: "Settings") -> dict[str, DeltaSnapshot | None]:
    return {name: delta_snapshot(name, settings.table(name)) for name in BASE_TABLES}


# ---------------------------------------------------------------------------------------
# embedded engine: DuckDB


_HIVE_TYPES = {"date32[day]": "DATE", "string": "VARCHAR", "large_string": "VARCHAR",
               "int32": "INTEGER", "int64": "BIGINT", "int16": "SMALLINT", "int8": "TINYINT",
               "bool": "BOOLEAN", "double": "DOUBLE", "float": "FLOAT"}


def _qi(name: str) -> str:
    """A DuckDB quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def _ql(text: str) -> str:
    """A SQL string literal (for paths we generate, never for user text)."""
    return "'" + text.replace("'", "''") + "'"


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def _select_list(described: list[tuple]) -> str:
    """Columns of a ``describe`` result, with UTC-adjusted timestamps turned into naive
    UTC timestamps: Spark returns those (session time zone UTC), so both engines agree.
    (Spark writes INT96, which DuckDB already reads as naive; other writers may not.)"""
    cols = []
    for name, dtype, *_ in described:
        if dtype == "TIMESTAMP WITH TIME ZONE":
            cols.append(f"timezone('UTC', {_qi(name)}) as {_qi(name)}")
        else:
            cols.append(_qi(name))
    return ", ".join(cols)


def _base_view_sql(snap: DeltaSnapshot, empty_file: Path) -> tuple[str, list[str]]:
    """The DuckDB table function reading exactly the snapshot's files, and those files."""
    import pyarrow.parquet as pq

    if not snap.files:
        # No data yet: an empty Parquet file with the table's schema keeps the view typed.
        pq.write_table(snap.arrow_schema.empty_table(), empty_file)
        return f"read_parquet({_ql(str(empty_file))})", [str(empty_file)]
    files = [_local_path(f) for f in snap.files]
    options = ""
    if snap.partition_columns:
        # Spark writes Hive-style partition directories; partition values live only in
        # the path, so check that layout before trusting it.
        root = _local_path(snap.path).rstrip("/") + "/"
        for f in files:
            rel = f[len(root):] if f.startswith(root) else f
            parts = rel.split("/")
            if [p.split("=", 1)[0] for p in parts[: len(snap.partition_columns)]] != list(snap.partition_columns):
                raise ServiceError(
                    f"Delta table {snap.name}: file {rel} is not in a col=value partition directory; "
                    f"the embedded engine cannot read it"
                )
        types = ", ".join(
            f"{_ql(c)}: {_ql(_HIVE_TYPES.get(str(snap.arrow_schema.field(c).type), 'VARCHAR'))}"
            for c in snap.partition_columns
        )
        options = f", hive_partitioning = true, hive_types = {{{types}}}"
    listing = ", ".join(_ql(f) for f in files)
    return f"read_parquet([{listing}]{options}, union_by_name = true)", files


# Bump when the generated DDL changes, so cached catalog files are rebuilt.
CATALOG_FORMAT = 2


@dataclasses.dataclass
class EmbeddedCatalog:
    """A DuckDB database file holding the base and curated views of one warehouse state."""

    path: Path
    allowed_files: list[str]
    views: list[str]
    missing_tables: dict[str, str]  # table -> its Delta path
    skipped_views: dict[str, list[str]]  # view -> the missing tables it needs


def _catalog_dir(settings: "Settings") -> Path:
    d = settings.home.resolve() / "sql"
    if writable_dir(d) is None:
        return d
    # An analyst may read a warehouse whose home they cannot write: keep the small
    # catalog file in a private temp directory instead.
    d = Path(tempfile.gettempdir()) / f"persona-sql-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def build_embedded_catalog(settings: "Settings", views: dict[str, View] | None = None) -> EmbeddedCatalog:
    """The DuckDB catalog file for the tables' current Delta versions (built if missing)."""
    import duckdb

    if not is_local_path(settings.warehouse_root):
        raise InputError(
            f"the embedded SQL engine reads local tables only (warehouse is {settings.warehouse_root}); "
            f"use `persona sql-server` or --url"
        )
    views = catalogue() if views is None else views
    snaps = table_snapshots(settings)
    missing = {n: settings.table(n) for n, s in snaps.items() if s is None}
    state = {
        "tables": {n: [s.path, s.version, list(s.files)] for n, s in snaps.items() if s is not None},
        "views": {v.name: v.sql for v in views.values()},
        "duckdb": duckdb.__version__,
        "format": CATALOG_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
    directory = _catalog_dir(settings)
    path = directory / f"catalog-{digest}.duckdb"
    manifest = directory / f"catalog-{digest}.json"
    if path.is_file() and manifest.is_file():
        info = json.loads(manifest.read_text())
        return EmbeddedCatalog(path, info["allowed_files"], info["views"], missing,
                               {k: v for k, v in info["skipped_views"].items()})

    tmp = directory / f".catalog-{digest}-{os.getpid()}.duckdb"
    tmp.unlink(missing_ok=True)
    allowed: list[str] = []
    created: list[str] = []
    skipped: dict[str, list[str]] = {}
    con = duckdb.connect(str(tmp))
    try:
        for name, snap in snaps.items():
            if snap is None:
                continue
            layer, table = name.split(".")
            source, files = _base_view_sql(snap, directory / f"empty-{layer}-{table}-{digest}.parquet")
            allowed += files
            columns = _select_list(con.execute(f"describe select * from {source}").fetchall())
            con.execute(f"create schema if not exists {_qi(layer)}")
            con.execute(f"create view {_qi(layer)}.{_qi(table)} as select {columns} from {source}")
        for view in views.values():
            needs = [t for t in view.tables if t in missing]
            if needs:
                skipped[view.name] = needs
                continue
            con.execute(f"create view {_qi(view.name)} as {view.translated('duckdb')}")
            con.execute(f"comment on view {_qi(view.name)} is {_ql(view.grain)}")
            created.append(view.name)
        con.execute("checkpoint")
    finally:
        con.close()
    os.replace(tmp, path)
    manifest.write_text(json.dumps({"allowed_files": allowed, "views": created, "skipped_views": skipped}))
    # Older catalogs describe table versions that may since have been vacuumed.
    for old in directory.glob("catalog-*"):
        if not old.name.startswith(f"catalog-{digest}"):
            old.unlink(missing_ok=True)
    for old in directory.glob("empty-*.parquet"):
        if digest not in old.name:
            old.unlink(missing_ok=True)
    return EmbeddedCatalog(path, allowed, created, missing, skipped)


def embedded_engine(settings: "Settings") -> "sa.Engine":
    """A SQLAlchemy engine on the read-only DuckDB catalog of the current tables."""
    import sqlalchemy as sa

    catalog = build_embedded_catalog(settings)
    engine = sa.create_engine(
        f"duckdb:///{catalog.path}",
        connect_args={"read_only": True, "config": {"threads": max(1, os.cpu_count() or 1)}},
        poolclass=sa.pool.QueuePool,
    )

    @sa.event.listens_for(engine, "connect")
    def _lock_down(dbapi_connection, _record):
        cur = dbapi_connection.cursor()
        # DuckDB shares one database instance per file within a process: a second
        # engine on the same catalog finds it already locked down (same digest, same
        # allowed files), and cannot change anything anyway.
        cur.execute("select current_setting('lock_configuration'), current_setting('enable_external_access')")
        locked, external = cur.fetchone()
        if locked:
            cur.close()
            if external:
                raise ServiceError(f"DuckDB catalog {catalog.path} is open without its file-access lock")
            return
        cur.execute("set TimeZone = 'UTC'")
        # Only the active files of each table (not vacuum-pending ones holding
        # forgotten users' rows), nothing else on disk, and no way to undo that.
        cur.execute("set allowed_paths = ?", [catalog.allowed_files])
        cur.execute("set enable_external_access = false")
        cur.execute("set lock_configuration = true")
        cur.close()

    engine.persona_catalog = catalog  # type: ignore[attr-defined]
    return engine


# ---------------------------------------------------------------------------------------
# running queries


@dataclasses.dataclass
class Result:
    columns: list[str]
    rows: list[tuple]
    seconds: float

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def dialect_of(engine: "sa.Engine") -> str:
    return SQLGLOT_DIALECTS.get(engine.dialect.name, engine.dialect.name)


def engine_for(settings: "Settings", url: str | None = None) -> "sa.Engine":
    """The embedded engine, or one for ``url`` (any SQLAlchemy URL)."""
    import sqlalchemy as sa

    if not url:
        return embedded_engine(settings)
    # The thrift transport logs each failed connect attempt on stderr; the error we
    # raise already says it.
    import logging

    logging.getLogger("thrift").setLevel(logging.CRITICAL)
    try:
        return sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise InputError(f"bad SQLAlchemy URL: {str(exc).splitlines()[0]}") from exc


def run_query(engine: "sa.Engine", sql: str, params: dict[str, Any] | None = None,
              limit: int | None = None) -> Result:
    """Check ``sql`` only reads, run it with ``params`` bound, fetch up to ``limit`` rows."""
    import sqlalchemy as sa

    if params:
        # Check the statement shape with each placeholder rendered as NULL (placeholder
        # syntax differs per driver and not every parser knows it).
        try:
            shape = sa.text(sql).bindparams(*[sa.bindparam(k, None) for k in params]).compile(
                dialect=engine.dialect, compile_kwargs={"literal_binds": True})
        except sa.exc.ArgumentError as exc:
            raise InputError(f"query parameters: {str(exc).splitlines()[0]}") from exc
        check_read_only(str(shape), dialect_of(engine))
    else:
        check_read_only(sql, dialect_of(engine))
    start = time.perf_counter()
    try:
        conn = engine.connect()
    except Exception as exc:  # refused, no such host, thrift transport errors, locked file
        where = engine.url.render_as_string(hide_password=True)
        raise ServiceError(f"cannot connect to {where}: {_first_error_line(str(getattr(exc, 'orig', None) or exc))}") from exc
    try:
        with conn:
            if params:
                result = conn.execute(sa.text(sql), params)
            else:
                # No parameters: send the text as is (a literal '%' or ':x' is not a
                # placeholder then).
                result = conn.execution_options(no_parameters=True).exec_driver_sql(sql)
            if not result.returns_rows:
                return Result([], [], time.perf_counter() - start)
            columns = list(result.keys())
            rows = result.fetchmany(limit) if limit is not None else result.fetchall()
            return Result(columns, [tuple(r) for r in rows], time.perf_counter() - start)
    except sa.exc.DBAPIError as exc:
        raise _engine_error(engine, exc) from exc
    except sa.exc.StatementError as exc:
        detail = re.sub(r"\s*\(Background on this error.*", "", str(exc.orig or exc).splitlines()[0])
        raise InputError(f"query parameters: {detail}") from exc


def _engine_error(engine: "sa.Engine", exc: Exception) -> Exception:
    message = _first_error_line(str(getattr(exc, "orig", None) or exc))
    catalog: EmbeddedCatalog | None = getattr(engine, "persona_catalog", None)
    if catalog is not None:
        for view, needs in catalog.skipped_views.items():
            if re.search(rf"\b{view}\b", message):
                paths = ", ".join(f"{t} ({catalog.missing_tables[t]})" for t in needs)
                return NotBuiltError(f"view {view} needs tables that are not built yet: {paths}")
        for table, path in catalog.missing_tables.items():
            if re.search(rf"\b{table.split('.')[1]}\b", message) and "does not exist" in message:
                return NotBuiltError(f"table {table} is not built yet (no Delta table at {path})")
    if "read-only" in message or "read only" in message:
        return InputError(message)
    if any(k in message for k in ("Connection refused", "Could not connect", "TTransportException")):
        return ServiceError(f"cannot reach {engine.url.render_as_string(hide_password=True)}: {message}")
    return InputError(message)


def _first_error_line(message: str) -> str:
    """The one line of an engine error a user needs (PyHive wraps Spark's in a TStatus)."""
    m = re.search(r"persona sql-server is read-only: [^:'\"]*", message)
    if m:
        return m.group(0).strip()
    m = re.search(r"Error running query: (?:[\w.]+Exception: )?(\[[A-Z_.]+\][^'\"]*?)(?::\d+:\d+|['\"])", message)
    if m:
        return m.group(1).strip()
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith("(Background"):
            return re.sub(r"^\([\w.]+\)\s*", "", line)
    return message.strip()


def view_query(engine: "sa.Engine", view: View, filters: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """``select * from <view>`` (or its translated body on engines without the view),
    with equality filters on the view's columns as bound parameters."""
    dialect = dialect_of(engine)
    prep = engine.dialect.identifier_preparer
    if engine.dialect.name in ("duckdb", "hive"):
        source = prep.quote(view.name)
    else:
        source = f"({view.translated(dialect)}) as {prep.quote(view.name)}"
    sql = f"select * from {source}"
    params: dict[str, Any] = {}
    if filters:
        columns = view_columns(engine, view)
        clauses = []
        for i, (column, value) in enumerate(filters.items()):
            if column not in columns:
                raise InputError(f"view {view.name} has no column {column!r}; columns: {', '.join(columns)}")
            params[f"p{i}"] = _coerce(value)
            clauses.append(f"{prep.quote(column)} = :p{i}")
        sql += " where " + " and ".join(clauses)
    return sql, params


def view_columns(engine: "sa.Engine", view: View) -> list[str]:
    sql, _ = view_query(engine, view)
    return run_query(engine, sql + " limit 0").columns


def _coerce(value: str) -> Any:
    """``--filter col=VALUE``: ints, floats and ISO dates as such, else the string."""
    for parse in (int, float, dt.date.fromisoformat):
        try:
            return parse(value)
        except ValueError:
            continue
    return value


def run_view(engine: "sa.Engine", name: str, filters: dict[str, str] | None = None,
             limit: int | None = None) -> Result:
    view = get_view(name)
    sql, params = view_query(engine, view, filters)
    return run_query(engine, sql, params, limit)


def jsonable(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------
# server: Spark's Thrift JDBC/ODBC server


def server_setup_statements(settings: "Settings", views: dict[str, View] | None = None
                            ) -> tuple[list[str], dict[str, list[str]]]:
    """Spark SQL registering the base tables (views over their Delta paths) and the
    curated views; curated views whose tables are missing are skipped and returned."""
    views = catalogue() if views is None else views
    present = {}
    for name in BASE_TABLES:
        path = settings.table(name)
        if not is_local_path(path) or Path(path, "_delta_log").is_dir():
            present[name] = path
    statements = []
    for layer in sorted({n.split(".")[0] for n in present}):
        statements.append(f"CREATE DATABASE IF NOT EXISTS {layer}")
    for name, path in present.items():
        # A view over the path, not a catalog table: registering a table on an existing
        # Delta location could write to its log; a view only ever reads it.
        quoted = "`" + path.replace("`", "``") + "`"
        statements.append(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM delta.{quoted}")
    skipped = {}
    for view in views.values():
        needs = [t for t in view.tables if t not in present]
        if needs:
            skipped[view.name] = needs
            continue
        comment = view.grain.replace("'", "")
        statements.append(f"CREATE OR REPLACE VIEW default.{view.name} COMMENT '{comment}' AS\n{view.sql}")
    return statements, skipped


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def guard_jar() -> Path:
    """The compiled read-only guard, built once per source and Spark version with javac."""
    import pyspark

    from spark_jobs.jars import default_jars_dir

    source = GUARD_SOURCE.read_bytes()
    key = hashlib.sha256(source + pyspark.__version__.encode()).hexdigest()[:12]
    # Not in the Delta jars directory: every Spark session puts all of those on its
    # classpath, and this jar is for the SQL server only.
    out_dir = default_jars_dir().parent / "sql-server"
    jar = out_dir / f"persona-sql-guard-{key}.jar"
    if jar.is_file():
        return jar
    javac, jar_tool = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar_tool is None:
        raise ServiceError("building the SQL server's read-only guard needs a JDK (javac, jar) once; install openjdk-17-jdk")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="persona-guard-") as build:
        classpath = str(_spark_home() / "jars" / "*")
        proc = subprocess.run([javac, "--release", "17", "-nowarn", "-cp", classpath, "-d", build, str(GUARD_SOURCE)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServiceError(f"could not compile {GUARD_SOURCE.name}: {proc.stderr.strip().splitlines()[0]}")
        tmp_jar = out_dir / f".{jar.name}.{os.getpid()}"
        subprocess.run([jar_tool, "cf", str(tmp_jar), "-C", build, "persona"], check=True)
        os.replace(tmp_jar, jar)
    return jar


_LOG4J = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex{2}
logger.thrift.name = org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
logger.thrift.level = info
"""


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class ThriftServer:
    """A running Spark Thrift server process (its own process group)."""

    host: str
    port: int
    process: subprocess.Popen
    workdir: Path
    log_path: Path
    skipped_views: dict[str, list[str]]

    @property
    def url(self) -> str:
        return f"hive://{self.host}:{self.port}/default"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the server's process group (Spark's shutdown hooks stop the service),
        then SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> "ThriftServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def thrift_command(settings: "Settings", host: str, port: int, setup_file: Path, workdir: Path
                   ) -> list[str]:
    """The spark-submit command line of the server (exposed for tests and docs)."""
    from spark_jobs.session import spark_conf

    conf = spark_conf(settings)
    jars = [j for j in conf.pop("spark.jars").split(",") if j] + [str(guard_jar())]
    log4j = workdir / "log4j2.properties"
    log4j.write_text(_LOG4J)
    for key in ("spark.master", "spark.app.name", "spark.driver.memory",
                "spark.pyspark.python", "spark.pyspark.driver.python"):
        conf.pop(key, None)
    conf.update({
        "spark.app.name": "persona-sql-server",
        "spark.sql.extensions": f"io.delta.sql.DeltaSparkSessionExtension,{GUARD_CLASS}$Extension",
        # The registered views live in this process only; no Derby metastore on disk.
        "spark.sql.catalogImplementation": "in-memory",
        "spark.sql.warehouse.dir": str(workdir / "spark-warehouse"),
        "spark.hadoop.hive.server2.thrift.port": str(port),
        "spark.hadoop.hive.server2.thrift.bind.host": host,
        "spark.hadoop.hive.server2.transport.mode": "binary",
        "spark.ui.enabled": "false",
        # Delta and the guard must be on the driver's system classpath: the Thrift
        # handler threads do not see jars added with --jars (NoClassDefFoundError on
        # Delta classes after the first queries).
        "spark.driver.extraClassPath": ":".join(jars),
        "spark.driver.extraJavaOptions": (
            conf.get("spark.driver.extraJavaOptions", "") + f" -Dlog4j2.configurationFile=file:{log4j}"
        ).strip(),
        "spark.jars": ",".join(jars),
    })
    cmd = [str(_spark_home() / "bin" / "spark-submit"), "--master", settings.spark.master,
           "--driver-memory", settings.spark.driver_memory, "--class", GUARD_CLASS]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += [str(guard_jar()), str(setup_file)]
    return cmd


def start_thrift_server(settings: "Settings", port: int | None = None, host: str | None = None,
                        timeout: float = 600, workdir: str | os.PathLike | None = None) -> ThriftServer:
    """Start the Thrift server on ``host:port`` and wait until it accepts connections.

    Raises ServiceError with the server's own one-line reason when it does not come up
    (port taken, a view that fails to register, no Java).
    """
    host = host or settings.sql.thrift_host
    port = settings.sql.thrift_port if port is None else port
    if not port_free(host, port):
        raise ServiceError(f"port {port} on {host} is already in use (pick another with --port)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ServiceError("the SQL server needs Java 17 (java not found)")
    work = Path(workdir) if workdir else settings.home.resolve() / "sql-server"
    work.mkdir(parents=True, exist_ok=True)
    statements, skipped = server_setup_statements(settings)
    setup_file = work / "setup.sql"
    setup_file.write_text("".join(f"{s}\n;\n" for s in statements))
    cmd = thrift_command(settings, host, port, setup_file, work)
    log_path = work / "server.log"
    env = dict(os.environ, SPARK_HOME=str(_spark_home()), SPARK_LOCAL_IP="127.0.0.1")
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env,
                            start_new_session=True)
    log.close()
    server = ThriftServer(host, port, proc, work, log_path, skipped)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"SQL server exited ({proc.returncode}): {server_failure(log_path)}")
        if "persona-sql-server-ready" in log_path.read_text(errors="replace") and not port_free(host, port):
            return server
        time.sleep(0.5)
    server.stop()
    raise ServiceError(f"SQL server did not start within {timeout:.0f}s; see {log_path}")


def server_failure(log_path: Path) -> str:
    text = log_path.read_text(errors="replace")
    for pattern in (r"persona-setup-failed: (.*)", r"persona-server-failed: (.*)", r"ERROR [\w.$]+: (.*)",
                    r"Exception[^:\n]*: (.*)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else f"no output (see {log_path})"


def wait_for_connection(url: str, timeout: float = 120) -> None:
    """Block until a SQLAlchemy connection to ``url`` succeeds (servers open the port
    slightly before they answer)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with engine.connect():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means: not yet
            last = exc
            time.sleep(1)
    raise ServiceError(f"cannot connect to {url}: {_first_error_line(str(last))}")

