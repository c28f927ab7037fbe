"""Running analyst SQL: engines, read-only query execution and curated views with filters.

Input: a SQLAlchemy engine (the embedded DuckDB one, ``persona sql-server``'s ``hive://``,
or any other URL: Trino, Databricks SQL, ...), and a query with bound parameters or a
view name with ``column=value`` filters. Output: a :class:`Result` (column names, up to
``limit`` rows as tuples, seconds); engine failures become one-line persona errors.

Engines without the curated views (anything but DuckDB and the Thrift server) run a
view as its translated body, so it works where the tables exist under the same names.

Safety: user text is never pasted into SQL. View names are checked against the
catalogue, filter columns against the view's columns, values are bound parameters,
and every statement is checked to be a read (``persona.sql.guard``) before it reaches
an engine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from core.errors import InputError, NotBuiltError, ServiceError
from persona.sql.catalogue import View, get_view
from persona.sql.embedded import EmbeddedCatalog, embedded_engine
from persona.sql.guard import check_read_only

if TYPE_CHECKING:
    from core.settings import Settings

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


@dataclasses.dataclass
class Result:
    columns: list[str]
    rows: list[tuple]
    seconds: float

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.rows]


def dialect_of(engine: sa.Engine) -> str:
    return SQLGLOT_DIALECTS.get(engine.dialect.name, engine.dialect.name)


def engine_for(settings: "Settings", url: str | None = None) -> sa.Engine:
    """The embedded engine, or one for ``url`` (any SQLAlchemy URL)."""
    if not url:
        return embedded_engine(settings)
    # The thrift transport logs each failed connect attempt on stderr; the error we
    # raise already says it.
    logging.getLogger("thrift").setLevel(logging.CRITICAL)
    try:
        return sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise InputError(f"bad SQLAlchemy URL: {str(exc).splitlines()[0]}") from exc


def _check(engine: sa.Engine, sql: str, params: dict[str, Any] | None) -> None:
    """The read-only check of ``sql`` as the engine will see it."""
    if not params:
        check_read_only(sql, dialect_of(engine))
        return
    # Check the statement shape with each placeholder rendered as NULL (placeholder
    # syntax differs per driver and not every parser knows it).
    try:
        shape = sa.text(sql).bindparams(*[sa.bindparam(k, None) for k in params]).compile(
            dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    except sa.exc.ArgumentError as exc:
        raise InputError(f"query parameters: {str(exc).splitlines()[0]}") from exc
    check_read_only(str(shape), dialect_of(engine))


def run_query(engine: sa.Engine, sql: str, params: dict[str, Any] | None = None,
              limit: int | None = None) -> Result:
    """Check ``sql`` only reads, run it with ``params`` bound, fetch up to ``limit`` rows."""
    _check(engine, sql, params)
    start = time.perf_counter()
    try:
        conn = engine.connect()
    except Exception as exc:  # refused, no such host, thrift transport errors, locked file
        where = engine.url.render_as_string(hide_password=True)
        raise ServiceError(f"cannot connect to {where}: {first_error_line(str(getattr(exc, 'orig', None) or exc))}") from exc
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


def _engine_error(engine: sa.Engine, exc: Exception) -> Exception:
    message = first_error_line(str(getattr(exc, "orig", None) or exc))
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


def first_error_line(message: str) -> str:
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


def view_query(engine: sa.Engine, view: View, filters: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
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


def view_columns(engine: sa.Engine, view: View) -> list[str]:
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


def run_view(engine: sa.Engine, name: str, filters: dict[str, str] | None = None,
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
