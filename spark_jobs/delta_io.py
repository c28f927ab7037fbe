"""Reading and writing Delta tables the way every job does: idempotently.

Writers own partitions: ``replace_where`` overwrites exactly the partition range a run
computed (Delta's ``replaceWhere``), so re-running a day or a range leaves identical
rows and never touches other days. Writes are atomic: a crashed writer leaves the
previous table version readable.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from persona.errors import NotBuiltError
from spark_jobs.schemas import conform


def is_delta(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

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
    writer.partitionBy(*(partition_by or [partition_col])).save(path)


def create_if_missing(spark: SparkSession, path: str, schema: StructType, partition_by: list[str]) -> None:
    """An empty table with the right schema, so readers never meet a missing path."""
    if is_delta(spark, path):
        return
    spark.createDataFrame([], schema).write.format("delta").mode("append").partitionBy(
        *partition_by
    ).save(path)


def partition_values(spark: SparkSession, path: str, col: str) -> list:
    """Distinct values of a partition column, read from the Delta log (no data scan)."""
    if not is_delta(spark, path):
        return []
    rows = spark.read.format("delta").load(path).select(col).distinct().collect()
    return sorted(r[0] for r in rows if r[0] is not None)
