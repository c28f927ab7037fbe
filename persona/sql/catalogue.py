"""The analysts' view catalogue: the curated views in ``sql/*.sql`` and their translation.

Input: ``sql/<name>.sql``, each one view written once in Spark SQL (lowercase, CTE-first,
a ``-- grain:`` comment first). Output: :class:`View` objects by name (one per file),
and the view bodies translated by sqlglot to another engine's dialect or rewritten to
read Delta paths directly.

Safety: a user-given view name reaches SQL only through :func:`get_view`, which accepts
nothing but catalogue keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
from functools import lru_cache
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError

from core.errors import InputError
from core.tables import TABLES

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "sql"

# The tables analysts see, by the names the views use: every table of the registry.
BASE_TABLES: tuple[str, ...] = tuple(TABLES)


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
    if dialect == "spark":
        return sql
    out = sqlglot.transpile(sql, read="spark", write=dialect, pretty=True,
                            unsupported_level=ErrorLevel.RAISE)
    return ";\n".join(out)


def translate_from(sql: str, source: str, target: str) -> str:
    """An analyst's query from dialect ``source`` to ``target`` (sqlglot names)."""
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

    def swap(node):
        if isinstance(node, exp.Table) and node.db and f"{node.db}.{node.name}" in paths:
            return exp.Table(
                this=exp.to_identifier(paths[f"{node.db}.{node.name}"], quoted=True),
                db=exp.to_identifier("delta"),
                alias=node.args.get("alias"),
            )
        return node

    return sqlglot.parse_one(sql, read="spark").transform(swap).sql("spark", pretty=True)
