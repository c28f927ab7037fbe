"""The embedded SQL engine: DuckDB over the active Parquet files of each Delta table.

Input: the Delta tables under ``settings.warehouse_root`` (their current versions, as
delta-rs lists them through ``core.delta_log``) and the curated views of the catalogue.
Output: a small DuckDB catalog file holding one view per base table (``layer.table``)
and one per curated view, rebuilt whenever a table's Delta version changes, and a
SQLAlchemy engine that opens it read-only, with file access limited to exactly the
files of those versions and the configuration locked.

Why not DuckDB's own ``delta`` extension: it needs a download, which an offline machine
cannot do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow.parquet as pq
import sqlalchemy as sa

from core.delta_log import DeltaSnapshot, delta_snapshot, is_local_path
from core.errors import InputError, ServiceError
from core.fs import writable_dir
from persona.sql.catalogue import BASE_TABLES, View, catalogue

if TYPE_CHECKING:
    from core.settings import Settings

# Bump when the generated DDL changes, so cached catalog files are rebuilt.
CATALOG_FORMAT = 2

_HIVE_TYPES = {"date32[day]": "DATE", "string": "VARCHAR", "large_string": "VARCHAR",
               "int32": "INTEGER", "int64": "BIGINT", "int16": "SMALLINT", "int8": "TINYINT",
               "bool": "BOOLEAN", "double": "DOUBLE", "float": "FLOAT"}


def table_snapshots(settings: "Settings") -> dict[str, DeltaSnapshot | None]:
    return {name: delta_snapshot(name, settings.table(name)) for name in BASE_TABLES}


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


def _write_catalog(path: Path, snaps: dict[str, DeltaSnapshot | None], views: dict[str, View],
                   missing: dict[str, str], digest: str) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Create the views in the DuckDB file ``path``; returns the files they read, the
    curated views created and those skipped (with the missing tables they need)."""
    allowed: list[str] = []
    created: list[str] = []
    skipped: dict[str, list[str]] = {}
    con = duckdb.connect(str(path))
    try:
        for name, snap in snaps.items():
            if snap is None:
                continue
            layer, table = name.split(".")
            source, files = _base_view_sql(snap, path.parent / f"empty-{layer}-{table}-{digest}.parquet")
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
    return allowed, created, skipped


def build_embedded_catalog(settings: "Settings", views: dict[str, View] | None = None) -> EmbeddedCatalog:
    """The DuckDB catalog file for the tables' current Delta versions (built if missing)."""
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
    allowed, created, skipped = _write_catalog(tmp, snaps, views, missing, digest)
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


def embedded_engine(settings: "Settings") -> sa.Engine:
    """A SQLAlchemy engine on the read-only DuckDB catalog of the current tables."""
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
