"""``persona sql`` (query the curated views and tables) and ``persona sql-server``.

Input: a query, a view name (``--view``), or ``--list``; optional ``--url`` (any
SQLAlchemy URL; default: the embedded read-only DuckDB engine over the Delta tables).
Output: the rows as a table, CSV or JSON on stdout; messages on stderr.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import time
from enum import Enum
from typing import List, Optional

import typer
from rich.table import Table

from core.errors import InputError, ServiceError
from persona.cli.app import app, settings
from persona.progress import console, out, stage

TABLE_ROWS = 200  # the terminal table shows this many rows unless --limit says otherwise


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _pairs(items: List[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{what} must look like NAME=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _print(result, fmt: Format, truncated: bool) -> None:
    from persona.sql.query import jsonable  # deferred: sqlglot, DuckDB, SQLAlchemy

    if fmt is Format.json:
        sys.stdout.write(json.dumps([jsonable(r) for r in result.records()], indent=None) + "\n")
        return
    if fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow([json.dumps(jsonable(v)) if isinstance(v, (list, dict)) else
                             ("" if v is None else jsonable(v)) for v in row])
        return
    table = Table(show_lines=False, header_style="bold")
    for col in result.columns:
        table.add_column(col, overflow="fold")
    for row in result.rows:
        table.add_row(*[_cell(jsonable(v)) for v in row])
    out.print(table)
    more = f" (first {len(result.rows)}; use --limit or --format csv for more)" if truncated else ""
    console.print(f"{len(result.rows)} rows in {result.seconds:.2f}s{more}")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@app.command("sql")
def sql(
    query: Optional[str] = typer.Argument(None, help="SQL query (read-only). Views and tables: see --list."),
    view: Optional[str] = typer.Option(None, "--view", help="Run a curated view by name (see --list)."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="Output format."),
    url: Optional[str] = typer.Option(
        None, "--url",
        help="SQLAlchemy URL of another engine, e.g. hive://127.0.0.1:10000/default (persona sql-server), "
             "trino://..., databricks://... Default: embedded DuckDB over the Delta tables.",
    ),
    param: List[str] = typer.Option(
        [], "--param", "-p", help="NAME=VALUE, bound to :NAME in the query (repeatable). Never pasted into SQL."
    ),
    filter_: List[str] = typer.Option(
        [], "--filter", help="COLUMN=VALUE equality filter for --view (repeatable; value bound)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Fetch at most this many rows."),
    dialect: Optional[str] = typer.Option(
        None, "--dialect", help="Write QUERY in this dialect (e.g. spark); sqlglot translates it for the engine."
    ),
    list_views: bool = typer.Option(False, "--list", help="List the curated views, their grain and tables."),
) -> None:
    """Query the profile tables and curated views, read-only.

    persona sql --list

    persona sql --view segment_summary --format csv

    persona sql "select * from user_profile_latest where segment_id = :s" -p s=3

    persona sql --view funnel_daily --url hive://127.0.0.1:10000/default
    """
    # deferred: sqlglot, DuckDB, SQLAlchemy (keeps `persona --help` fast)
    from persona.sql.catalogue import catalogue, translate_from
    from persona.sql.query import Result, dialect_of, engine_for, run_query, run_view

    if list_views:
        views = catalogue()
        if fmt is Format.json:
            sys.stdout.write(json.dumps([{"name": v.name, "grain": v.grain, "tables": list(v.tables),
                                          "description": v.description} for v in views.values()]) + "\n")
            return
        rows = [(v.name, v.grain, ", ".join(v.tables)) for v in views.values()]
        _print(Result(["view", "grain", "reads"], rows, 0.0), fmt, False)
        return
    if (query is None) == (view is None):
        raise InputError("give either a QUERY or --view NAME (or --list)")
    if filter_ and view is None:
        raise InputError("--filter applies to --view; in a query use :name placeholders and --param")
    if param and view is not None:
        raise InputError("--param applies to a QUERY; for --view use --filter COLUMN=VALUE")

    engine = engine_for(settings(), url)
    fetch = limit if limit is not None else (TABLE_ROWS + 1 if fmt is Format.table else None)
    if view is not None:
        result = run_view(engine, view, _pairs(filter_, "--filter"), limit=fetch)
    else:
        text = query
        if dialect:
            try:
                text = translate_from(query, dialect, dialect_of(engine))
            except ValueError as exc:
                raise InputError(str(exc)) from exc
        result = run_query(engine, text, _pairs(param, "--param"), limit=fetch)
    truncated = limit is None and fmt is Format.table and len(result.rows) > TABLE_ROWS
    if truncated:
        result.rows = result.rows[:TABLE_ROWS]
    _print(result, fmt, truncated)


@app.command("sql-server")
def sql_server(
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: sql.thrift_port, 10000)."),
    host: Optional[str] = typer.Option(
        None, "--host", help="Bind address (default: sql.thrift_host, 127.0.0.1). The server has no authentication."
    ),
) -> None:
    """Run Spark's Thrift JDBC/ODBC server (HiveServer2) over the Delta tables until Ctrl-C.

    The tables (bronze.events, silver.user_behaviour, gold.user_profiles, ...) and the curated views are registered; every statement that would write is refused.

    Connect with beeline (jdbc:hive2://HOST:PORT/default), any HiveServer2 client, or SQLAlchemy/PyHive: persona sql --url hive://HOST:PORT/default --view segment_summary
    """  # noqa: E501 - typer re-wraps the text; hard line breaks would show
    from persona.sql.thrift import server_failure, start_thrift_server  # deferred: Spark

    s = settings()
    host = host or s.sql.thrift_host
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning[/]: binding to {host}: anyone who reaches it can read every table")
    with stage("starting the Spark Thrift server (a JVM; this takes a while)"):
        server = start_thrift_server(s, port=port, host=host)

    def _terminate(signum, frame):  # SIGTERM: stop the server like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        for name, needs in server.skipped_views.items():
            console.print(f"[yellow]skipped view[/] {name}: needs {', '.join(needs)} (not built yet)")
        console.print(f"[bold green]ready[/] {server.url}   (jdbc:hive2://{server.host}:{server.port}/default)")
        console.print(f"log: {server.log_path}; stop with Ctrl-C")
        while server.running():
            time.sleep(1)
        raise ServiceError(f"SQL server exited: {server_failure(server.log_path)}")
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        server.stop()
