"""The read-only check every analyst statement passes before it reaches an engine.

Input: one SQL text and the sqlglot dialect of the engine it is meant for. Output:
nothing when the text is exactly one statement that only reads, else an InputError
naming the kind of statement refused (one line).

The engines enforce read-only access too (the read-only DuckDB catalog file, the Thrift
server's guard in ``sql/thrift/ReadOnlyThriftServer.java``); this check gives a clear
error first and closes the gaps they leave (DuckDB's ``COPY ... TO``, ``SELECT INTO``).
"""

from __future__ import annotations

import re

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from core.errors import InputError

_READ_STATEMENTS = {"SELECT"}

# sqlglot nodes that write, change the catalog or the session, or run other statements.
_FORBIDDEN = (exp.DML, exp.DDL, exp.Copy, exp.Set, exp.Use, exp.Cache, exp.Uncache,
              exp.Refresh, exp.TruncateTable, exp.Grant, exp.Revoke, exp.Merge,
              exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter,
              exp.LoadData, exp.Into, exp.Pragma, exp.Transaction, exp.Commit,
              exp.Rollback, exp.Kill, exp.Execute, exp.Analyze, exp.Attach, exp.Detach)


def check_read_only(sql: str, dialect: str) -> None:
    """Raise InputError unless every statement in ``sql`` only reads.

    DuckDB: its own parser classifies the statements (exact). Other engines: sqlglot,
    rejecting anything it cannot parse as a plain query.
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
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as exc:
        raise InputError(f"could not check that the query only reads: {str(exc).splitlines()[0]}") from exc
    if len(statements) > 1:
        raise InputError("one statement at a time, please")
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
            if isinstance(node, _FORBIDDEN) or isinstance(node, exp.Command):
                raise _refuse(node.key.upper())
