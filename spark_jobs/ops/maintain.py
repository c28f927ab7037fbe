"""Table upkeep: ``run_maintain(spark, settings)``.

Per table: delete snapshots older than ``maintenance.snapshot_retention_days``
(snapshot tables, by ``as_of_date``; the daily partials ``silver.user_daily``, by
``event_date``, 29 days further back, so every kept snapshot can be rolled up again),
OPTIMIZE (bin-packing small files into larger ones), VACUUM by
``maintenance.vacuum_retention_hours``. Output: one summary row per table (files
before/after, snapshot rows removed, files vacuumed). Meant to run while nothing else
writes to the tables.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Callable, Sequence

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.errors import InputError
from core.tables import LONGEST_WINDOW, SNAPSHOT_TABLES
from spark_jobs import delta_io
from spark_jobs.ops.housekeeping import detail, history, quoted, vacuum
from spark_jobs.schemas import TABLES

# One row per user per event_date: the daily partials the behaviour snapshots roll up.
# Kept as far back as the oldest retained snapshot's longest window reaches (29 days
# before it); older partials only serve as-of days already deleted, and a backfill of
# such days recomputes missing partials from bronze.
PARTIAL_TABLES = {"silver.user_daily": "event_date"}

Progress = Callable[[str], None] | None


def _retention_rule(name: str) -> tuple[str, int] | None:
    """(date column, extra days kept) of a table snapshot retention applies to."""
    if name in SNAPSHOT_TABLES:
        return "as_of_date", 0
    if name in PARTIAL_TABLES:
        return PARTIAL_TABLES[name], LONGEST_WINDOW - 1
    return None


def _drop_old_snapshots(spark: SparkSession, path: str, days: int, column: str = "as_of_date",
                        reach: int = 0) -> tuple[int, dt.date | None]:
    """Delete rows with ``column`` before (newest - days - reach); returns (rows, cutoff)."""
    newest = spark.read.format("delta").load(path).agg(F.max(column)).first()[0]
    if newest is None:
        return 0, None
    cutoff = newest - dt.timedelta(days=days + reach)
    # A date literal, not a user id: fine in the commit's recorded predicate.
    res = spark.sql(f"DELETE FROM {quoted(path)} WHERE {column} < DATE'{cutoff.isoformat()}'").first()
    return int(res[0] if res is not None else 0), cutoff


def _optimize(spark: SparkSession, path: str) -> tuple[int, int]:
    row = spark.sql(f"OPTIMIZE {quoted(path)}").first()
    metrics = row["metrics"] if row is not None else None
    if metrics is None:
        return 0, 0
    return int(metrics["numFilesRemoved"] or 0), int(metrics["numFilesAdded"] or 0)


def _is_retention_refusal(exc: Exception) -> bool:
    text = str(exc).lower()
    return "retention" in text and ("vacuum" in text or "low" in text or "short" in text)


def maintain_table(spark: SparkSession, settings, name: str) -> dict:
    m = settings.maintenance
    path = settings.table(name)
    if not delta_io.is_delta(spark, path):
        return {"table": name, "status": "absent"}
    t0 = time.perf_counter()
    before = detail(spark, path)
    row = {"table": name, "status": "ok", "files_before": before["files"], "bytes_before": before["bytes"],
           "snapshot_rows_deleted": 0, "snapshots_before": None, "files_compacted": 0, "files_written": 0,
           "files_vacuumed": 0, "retention_hours": m.vacuum_retention_hours, "notes": []}
    rule = _retention_rule(name)
    if rule is not None and m.snapshot_retention_days > 0:
        deleted, cutoff = _drop_old_snapshots(spark, path, m.snapshot_retention_days, *rule)
        row["snapshot_rows_deleted"] = deleted
        row["snapshots_before"] = cutoff.isoformat() if cutoff else None
    files_now = detail(spark, path)["files"]
    if files_now >= m.optimize_min_files:
        row["files_compacted"], row["files_written"] = _optimize(spark, path)
    try:
        row["files_vacuumed"] = vacuum(spark, path, m.vacuum_retention_hours, override_check=False)
    except Exception as exc:  # Delta refuses a retention below the table's own window
        if not _is_retention_refusal(exc):
            raise
        # The configured policy is an explicit choice: apply it, and say so.
        row["files_vacuumed"] = vacuum(spark, path, m.vacuum_retention_hours, override_check=True)
        row["notes"].append("retention below the table's delta.deletedFileRetentionDuration: check overridden")
    after = detail(spark, path)
    row.update(files_after=after["files"], bytes_after=after["bytes"],
               version=history(spark, path, 1)[0]["version"], seconds=round(time.perf_counter() - t0, 2))
    return row


def run_maintain(spark: SparkSession, settings, tables: Sequence[str] | None = None,
                 progress: Progress = None) -> dict:
    """Snapshot retention, OPTIMIZE and VACUUM on every (or the named) table."""
    names = list(tables or TABLES)
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise InputError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(TABLES)}")
    t0 = time.perf_counter()
    rows = []
    for name in names:
        if progress:
            progress(name)
        rows.append(maintain_table(spark, settings, name))
    return {"tables": rows, "policy": settings.maintenance.model_dump(), "seconds": round(time.perf_counter() - t0, 2)}
