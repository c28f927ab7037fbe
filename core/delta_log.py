"""Delta tables read straight from their transaction log with delta-rs: no JVM, no Spark job.

Four readers use it: the embedded SQL engine (the active Parquet files of a table
version), the daily refresh's staleness check (per-partition maxima from the files'
statistics), the listing of a table's partition values (``spark_jobs.delta_io``) and
materialization (the newest ``event_timestamp``). All of them must
refuse a table whose files a plain Parquet reader would misread, so that check lives
here once (:func:`plain_parquet_blockers`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from core.errors import ServiceError


@dataclasses.dataclass(frozen=True)
class DeltaSnapshot:
    """The active files of one Delta table version (what a reader must scan)."""

    name: str
    path: str
    version: int
    files: tuple[str, ...]
    partition_columns: tuple[str, ...]
    arrow_schema: Any  # pyarrow.Schema


# Reader features whose data a plain Parquet scan would read wrongly.
_UNSUPPORTED_READER_FEATURES = {"deletionVectors", "columnMapping"}


def is_local_path(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def plain_parquet_blockers(table: DeltaTable) -> set[str]:
    """The features of a delta-rs ``DeltaTable`` that make reading its files as plain
    Parquet (or trusting their statistics) wrong; empty when it is safe."""
    protocol = table.protocol()
    blocking = set(protocol.reader_features or []) & _UNSUPPORTED_READER_FEATURES
    # Reader version 2 means column mapping; version 3 lists its reader features.
    if protocol.min_reader_version == 2:
        blocking.add("columnMapping")
    return blocking


def delta_snapshot(name: str, path: str) -> DeltaSnapshot | None:
    """The latest snapshot of the table at ``path``, or None when there is no table."""
    if is_local_path(path) and not Path(path.removeprefix("file://"), "_delta_log").is_dir():
        return None
    try:
        table = DeltaTable(path)
    except TableNotFoundError:
        return None
    except Exception as exc:  # protocol features delta-rs cannot read, corrupt logs
        raise ServiceError(f"cannot read Delta table {name} at {path}: {str(exc).splitlines()[0]}") from exc
    blocking = plain_parquet_blockers(table)
    if blocking:
        raise ServiceError(
            f"Delta table {name} uses {', '.join(sorted(blocking))}, which the embedded engine "
            f"cannot read as plain Parquet; query it through `persona sql-server` instead"
        )
    files = tuple(sorted(table.file_uris()))
    return DeltaSnapshot(
        name=name,
        path=path,
        version=table.version(),
        files=files,
        partition_columns=tuple(table.metadata().partition_columns),
        arrow_schema=table.schema().to_pyarrow(),
    )


def _add_actions(path: str | None, names: tuple[str, ...]) -> list[tuple] | None:
    """The columns ``names`` of the table's add actions (flattened: ``partition.<col>``,
    ``num_records``, ``null_count.<col>``, ``max.<col>``...), one tuple per live file;
    None when they cannot be trusted to describe the rows: no path, a remote or absent
    table, deletion vectors or column mapping (a file's statistics would still count
    deleted rows), or a column the log does not record."""
    if not path or not is_local_path(path):
        return None
    try:
        table = DeltaTable(path.removeprefix("file://"))
        if plain_parquet_blockers(table):
            return None
        actions = table.get_add_actions(flatten=True)
        if any(n not in actions.column_names for n in names):
            return None
        return list(zip(*(actions.column(n).to_pylist() for n in names)))
    except Exception:  # no table, an unreadable log: the caller scans instead
        return None


def stats_day_max(path: str | None, column: str, lo: dt.date, hi: dt.date) -> dict[dt.date, object] | None:
    """event_date -> max(``column``) over [lo, hi], from the Delta log's per-file
    statistics (no data read), or None when the statistics cannot answer exactly: no
    path, a remote or absent table, deletion vectors or column mapping (a file's
    statistics would still count deleted rows), or a file without statistics. Files
    whose values are all null (a partials file of key rows only) contribute nothing, as
    in ``max``.

    The values are the statistics' (Delta keeps timestamps to the millisecond), so they
    are only ever compared with values from this same function.
    """
    rows = _add_actions(path, ("partition.event_date", "num_records", f"null_count.{column}", f"max.{column}"))
    if rows is None:
        return None
    out: dict[dt.date, object] = {}
    for day, n, nulls, top in rows:
        if isinstance(day, str):
            day = dt.date.fromisoformat(day)
        if day is None or not lo <= day <= hi:
            continue
        if n is None or nulls is None:
            return None  # written without statistics
        if nulls >= n:
            continue
        if top is None:
            return None
        out[day] = top if day not in out else max(out[day], top)
    return out


def partition_values(path: str | None, column: str) -> list | None:
    """The distinct non-null values of partition column ``column`` among the files that
    hold rows, sorted, from the log's add actions (no data read); None when the log
    cannot answer exactly: no path, a remote or absent table, deletion vectors or column
    mapping (a file may hold only deleted rows), or a file without a row count."""
    rows = _add_actions(path, (f"partition.{column}", "num_records"))
    if rows is None:
        return None
    if any(n is None for _, n in rows):
        return None  # written without statistics
    return sorted({value for value, n in rows if n > 0 and value is not None})


def latest_event_timestamp(path: str) -> dt.datetime | None:
    """The newest ``event_timestamp`` of the table from its files' statistics, rounded up
    to the end of that millisecond (statistics keep milliseconds); None when the log
    cannot say (no table, an unsupported reader feature, a remote store without
    credentials, no statistics)."""
    try:
        adds = DeltaTable(path).get_add_actions(flatten=True)
        if adds.num_rows == 0 or "max.event_timestamp" not in adds.schema.names:
            return None
        value = pc.max(adds.column("max.event_timestamp")).as_py()
    except Exception:
        return None
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc) + dt.timedelta(microseconds=999)
