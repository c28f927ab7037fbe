"""Reading and writing Delta tables the way every job does: idempotently.

Writers own partitions: ``replace_where`` overwrites exactly the partition range a run
computed (Delta's ``replaceWhere``), so re-running a day or a range leaves identical
rows and never touches other days. Writes are atomic: a crashed writer leaves the
previous table version readable.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from typing import Callable, Iterable

# Importing delta.exceptions also installs the conversion of the JVM's commit-conflict
# exceptions into these Python classes (what retry_conflicts catches).
from delta import exceptions as dx
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from core import delta_log
from core.errors import NotBuiltError
from spark_jobs.schemas import conform

_log = logging.getLogger(__name__)


def is_delta(spark: SparkSession, path: str) -> bool:
    try:
        return DeltaTable.isDeltaTable(spark, path)
    except Exception:  # a missing directory is not a table
        return False


def read(spark: SparkSession, path: str, what: str | None = None) -> DataFrame:
    """The table at ``path``, or a NotBuiltError naming the step that builds it."""
    if not is_delta(spark, path):
        hint = f" ({what})" if what else ""
        raise NotBuiltError(f"no Delta table at {path}{hint}")
    return spark.read.format("delta").load(path)


def _sql_date(d: dt.date) -> str:
    return f"DATE'{d.isoformat()}'"


# Delta's optimistic concurrency control fails a commit that conflicts with one that
# landed since this writer read the table: two jobs creating the same table at once
# (ProtocolChanged / MetadataChanged), or overlapping ranges (ConcurrentAppend /
# ConcurrentDeleteRead). Re-running the writes below is safe: what they leave depends
# only on their input and range (replaceWhere) or on nothing (an empty table), so a
# retry converges to what a serial run leaves. Bounded, with a jittered backoff.
CONFLICT_RETRIES = 4
_CONFLICTS = (
    dx.ProtocolChangedException, dx.MetadataChangedException, dx.ConcurrentAppendException,
    dx.ConcurrentDeleteReadException, dx.ConcurrentDeleteDeleteException,
    dx.ConcurrentWriteException, dx.ConcurrentTransactionException,
    dx.DeltaConcurrentModificationException,
)


def retry_conflicts(write: Callable[[], None], retries: int = CONFLICT_RETRIES) -> int:
    """Run ``write`` (an idempotent Delta write), retrying it on a concurrent-commit
    conflict; returns the number of retries it took."""
    for attempt in range(retries + 1):
        try:
            write()
            return attempt
        except _CONFLICTS as exc:
            if attempt == retries:
                raise
            _log.warning(
                "concurrent Delta commit (%s); retrying the write (%d/%d)",
                type(exc).__name__, attempt + 1, retries)
            time.sleep(min(4.0, 0.25 * 2**attempt) * (0.5 + random.random()))
    return retries


def replace_where(
    df: DataFrame,
    path: str,
    schema: StructType,
    partition_col: str,
    start: dt.date,
    end: dt.date,
    partition_by: Iterable[str] | None = None,
) -> None:
    """Atomically replace the rows with ``start <= partition_col <= end`` by ``df``.

    ``df`` must only hold rows inside the range (Delta checks it and fails otherwise),
    which is what makes a re-run of the same range idempotent.
    """
    out = conform(df, schema)
    predicate = f"{partition_col} >= {_sql_date(start)} AND {partition_col} <= {_sql_date(end)}"
    writer = out.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
    writer = writer.partitionBy(*(partition_by or [partition_col]))
    retry_conflicts(lambda: writer.save(path))


def create_if_missing(spark: SparkSession, path: str, schema: StructType, partition_by: list[str]) -> None:
    """An empty table with the right schema, so readers never meet a missing path."""
    def create() -> None:
        if is_delta(spark, path):  # a concurrent job may have created it meanwhile
            return
        spark.createDataFrame([], schema).write.format("delta").mode("append").partitionBy(
            *partition_by
        ).save(path)

    retry_conflicts(create)


def commit_rows(spark: SparkSession, path: str) -> int | None:
    """Rows written by the table's last commit, from Delta's operation metrics (no scan);
    None when the commit recorded none (callers that need the number count instead)."""
    try:
        metrics = DeltaTable.forPath(spark, path).history(1).collect()[0]["operationMetrics"] or {}
        return int(metrics["numOutputRows"])
    except Exception:  # no such metric (an older writer), no table
        return None


def partition_values(spark: SparkSession, path: str, col: str) -> list:
    """Distinct non-null values of a partition column, sorted. Read from the Delta log
    (delta-rs, no Spark job) when it can answer exactly; otherwise (remote storage,
    deletion vectors, no statistics) a Spark scan of that one column."""
    values = delta_log.partition_values(path, col)
    if values is not None:
        return values
    if not is_delta(spark, path):
        return []
    rows = spark.read.format("delta").load(path).select(col).distinct().collect()
    return sorted(r[0] for r in rows if r[0] is not None)
