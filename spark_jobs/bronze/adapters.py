"""Source-format adapters: raw files -> canonical event columns plus a rejection reason.

Each adapter reads its files with every field as a string (so nothing fails to parse at
read time), then ``to_canonical`` maps them onto the bronze columns and ``validate``
adds ``reason``: null for a valid event, else the first rule the row breaks. Nothing is
dropped here; the ingest job routes reason-carrying rows to the quarantine table.

Formats:
- ``generic``: the canonical column names; CSV with a header, JSON lines or Parquet.
- ``taobao``: Tianchi UserBehavior, no header:
  ``user_id,item_id,category_id,behavior_type,unix_seconds`` (pv/buy/cart/fav).
- ``rees46``: header ``event_time,event_type,product_id,category_id,category_code,brand,
  price,user_id,user_session``; ``2019-10-01 00:00:00 UTC`` times; 19-digit category ids
  kept as exact strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from core.tables import EVENT_TYPES

CORRUPT = "_corrupt_record"

# Reasons, in the order rules are checked (the first broken rule is recorded).
REASONS = (
    "malformed_line",
    "bad_encoding",
    "missing_user_id",
    "missing_item_id",
    "unparseable_timestamp",
    "future_timestamp",
    "timestamp_too_old",
    "unknown_event_type",
    "unparseable_price",
    "negative_price",
    "unparseable_quantity",
    "invalid_quantity",
)

TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
REES46_COLUMNS = (
    "event_time", "event_type", "product_id", "category_id", "category_code",
    "brand", "price", "user_id", "user_session",
)
GENERIC_REQUIRED = ("user_id", "item_id", "event_type", "event_ts")
GENERIC_OPTIONAL = ("event_id", "category_id", "price", "quantity", "session_id", "query", "brand")
TAOBAO_TYPES = {"pv": "view", "buy": "purchase", "cart": "cart", "fav": "fav"}
REES46_TYPES = {"view": "view", "cart": "cart", "purchase": "purchase"}


def string_schema(columns) -> StructType:
    return StructType([StructField(c, StringType(), True) for c in columns] + [StructField(CORRUPT, StringType(), True)])


def _blank_to_null(c: Column) -> Column:
    t = F.trim(c)
    return F.when(t == "", None).otherwise(t)


def _map_type(col: Column, mapping: dict[str, str]) -> Column:
    """Source type -> canonical type; unknown values stay raw (validation flags them)."""
    expr = F.lower(F.trim(col))
    out = None
    for src, dst in mapping.items():
        out = (F.when(expr == src, F.lit(dst)) if out is None else out.when(expr == src, F.lit(dst)))
    return out.otherwise(F.concat(F.lit("?"), F.coalesce(col, F.lit(""))))


def _raw_record(columns) -> Column:
    """The row as the source wrote it: the malformed line verbatim, else the fields joined."""
    joined = F.concat_ws(",", *[F.coalesce(F.col(c), F.lit("")) for c in columns])
    return F.coalesce(F.col(CORRUPT), joined)


@dataclass(frozen=True)
class Adapter:
    name: str
    read: Callable[[SparkSession, list[str]], DataFrame]
    to_canonical: Callable[[DataFrame], DataFrame]


# ---------------------------------------------------------------------------- readers
def _read_csv(spark: SparkSession, files: list[str], columns, header: bool) -> DataFrame:
    return (
        spark.read.schema(string_schema(columns))
        .option("header", header)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .option("multiLine", False)
        # RFC 4180: a quote inside a quoted field is doubled (Spark's default escape is \).
        .option("escape", '"')
        .option("encoding", "UTF-8")
        .csv(files)
        .withColumn("_file", F.col("_metadata.file_path"))
    )


def read_taobao(spark: SparkSession, files: list[str]) -> DataFrame:
    return _read_csv(spark, files, TAOBAO_COLUMNS, header=False)


def read_rees46(spark: SparkSession, files: list[str]) -> DataFrame:
    return _read_csv(spark, files, REES46_COLUMNS, header=True)


def read_generic(spark: SparkSession, files: list[str], kind: str, columns: list[str]) -> DataFrame:
    """``kind`` is csv/json/parquet; ``columns`` are the canonical columns the files carry."""
    cols = [c for c in (*GENERIC_REQUIRED, *GENERIC_OPTIONAL) if c in columns]
    if kind == "csv":
        df = _read_csv(spark, files, columns, header=True)
    elif kind == "json":
        df = (
            spark.read.schema(string_schema(columns))
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            # Numbers and booleans arrive as their JSON text in string fields.
            .option("primitivesAsString", True)
            .json(files)
            .withColumn("_file", F.col("_metadata.file_path"))
        )
    elif kind == "parquet":
        raw = spark.read.parquet(*files)
        # Everything as strings, like the text formats: one validation path for all.
        df = raw.select(
            *[F.col(c).cast("string").alias(c) for c in columns],
            F.lit(None).cast("string").alias(CORRUPT),
            F.col("_metadata.file_path").alias("_file"),
        )
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(kind)
    for c in (*GENERIC_REQUIRED, *GENERIC_OPTIONAL):
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast("string"))
    return df.withColumn("_raw", _raw_record(columns if kind != "json" else cols))


# ------------------------------------------------------------------ canonical mapping
def _seconds_to_ts(secs: Column) -> Column:
    """Unix seconds -> timestamp; out-of-range values become null (ANSI mode would raise)."""
    return F.when(secs.between(-62135596800, 253402300799), F.timestamp_seconds(secs))


def taobao_to_canonical(df: DataFrame) -> DataFrame:
    secs = F.col("timestamp").try_cast("long")
    return df.select(
        F.lit(None).cast("string").alias("source_event_id"),
        _blank_to_null(F.col("user_id")).alias("user_id"),
        _blank_to_null(F.col("item_id")).alias("item_id"),
        _blank_to_null(F.col("category_id")).alias("category_id"),
        _map_type(F.col("behavior_type"), TAOBAO_TYPES).alias("event_type"),
        _seconds_to_ts(secs).alias("event_ts"),
        F.col("timestamp").alias("_raw_ts"),
        F.lit(None).cast("string").alias("_raw_price"),
        F.lit(None).cast("string").alias("_raw_quantity"),
        F.lit(None).cast("string").alias("session_id"),
        F.lit(None).cast("string").alias("query"),
        F.lit(None).cast("string").alias("brand"),
        F.lit("taobao").alias("source"),
        F.col(CORRUPT).alias("_corrupt"),
        _raw_record(TAOBAO_COLUMNS).alias("_raw"),
        F.col("_file"),
    )


def rees46_to_canonical(df: DataFrame) -> DataFrame:
    ts_text = F.regexp_replace(F.trim(F.col("event_time")), r"\s*UTC$", "")
    return df.select(
        F.lit(None).cast("string").alias("source_event_id"),
        _blank_to_null(F.col("user_id")).alias("user_id"),
        _blank_to_null(F.col("product_id")).alias("item_id"),
        _blank_to_null(F.col("category_id")).alias("category_id"),
        _map_type(F.col("event_type"), REES46_TYPES).alias("event_type"),
        F.try_to_timestamp(ts_text, F.lit("yyyy-MM-dd HH:mm:ss")).alias("event_ts"),
        F.col("event_time").alias("_raw_ts"),
        _blank_to_null(F.col("price")).alias("_raw_price"),
        F.lit(None).cast("string").alias("_raw_quantity"),
        _blank_to_null(F.col("user_session")).alias("session_id"),
        F.lit(None).cast("string").alias("query"),
        _blank_to_null(F.col("brand")).alias("brand"),
        F.lit("rees46").alias("source"),
        F.col(CORRUPT).alias("_corrupt"),
        _raw_record(REES46_COLUMNS).alias("_raw"),
        F.col("_file"),
    )


def generic_to_canonical(df: DataFrame) -> DataFrame:
    ts = _blank_to_null(F.col("event_ts"))
    # ISO-8601 with optional offset/Z; a bare number is read as Unix seconds.
    parsed = F.coalesce(
        F.when(ts.rlike(r"^\d{9,11}(\.\d+)?$"), _seconds_to_ts(ts.try_cast("double").try_cast("long"))),
        ts.try_cast("timestamp"),
    )
    return df.select(
        _blank_to_null(F.col("event_id")).alias("source_event_id"),
        _blank_to_null(F.col("user_id")).alias("user_id"),
        _blank_to_null(F.col("item_id")).alias("item_id"),
        _blank_to_null(F.col("category_id")).alias("category_id"),
        F.lower(F.trim(F.col("event_type"))).alias("event_type"),
        parsed.alias("event_ts"),
        F.col("event_ts").alias("_raw_ts"),
        _blank_to_null(F.col("price")).alias("_raw_price"),
        _blank_to_null(F.col("quantity")).alias("_raw_quantity"),
        _blank_to_null(F.col("session_id")).alias("session_id"),
        _blank_to_null(F.col("query")).alias("query"),
        _blank_to_null(F.col("brand")).alias("brand"),
        F.lit("generic").alias("source"),
        F.col(CORRUPT).alias("_corrupt"),
        F.col("_raw"),
        F.col("_file"),
    )


# ------------------------------------------------------------------------ validation
def validate(df: DataFrame, max_future_days: int, min_event_date: str) -> DataFrame:
    """Add typed ``price``/``quantity``, ``event_date`` and ``reason`` (null when valid)."""
    price = F.col("_raw_price").try_cast("double")
    qty_d = F.col("_raw_quantity").try_cast("double")
    future_limit = F.current_timestamp() + F.make_interval(days=F.lit(max_future_days))
    text_cols = ["user_id", "item_id", "category_id", "session_id", "query", "brand", "_raw"]
    bad_text = None
    for c in text_cols:
        cond = F.coalesce(F.col(c).contains("\ufffd"), F.lit(False))
        bad_text = cond if bad_text is None else (bad_text | cond)
    rules: list[tuple[Column, str]] = [
        (F.col("_corrupt").isNotNull(), "malformed_line"),
        (bad_text, "bad_encoding"),
        (F.col("user_id").isNull(), "missing_user_id"),
        (F.col("item_id").isNull(), "missing_item_id"),
        (F.col("event_ts").isNull(), "unparseable_timestamp"),
        (F.col("event_ts") > future_limit, "future_timestamp"),
        (F.col("event_ts") < F.lit(min_event_date).cast("timestamp"), "timestamp_too_old"),
        (~F.coalesce(F.col("event_type").isin(*EVENT_TYPES), F.lit(False)), "unknown_event_type"),
        (F.col("_raw_price").isNotNull() & (price.isNull() | F.isnan(price) | (F.abs(price) == float("inf"))), "unparseable_price"),
        (price < 0, "negative_price"),
        (F.col("_raw_quantity").isNotNull() & (qty_d.isNull() | (qty_d != F.floor(qty_d)) | (F.abs(qty_d) > 2**31 - 1)), "unparseable_quantity"),
        (qty_d <= 0, "invalid_quantity"),
    ]
    reason = None
    for cond, name in rules:
        cond = F.coalesce(cond, F.lit(False))
        reason = F.when(cond, F.lit(name)) if reason is None else reason.when(cond, F.lit(name))
    reason = reason.otherwise(F.lit(None).cast("string"))
    return df.withColumns(
        {
            "price": price,
            "quantity": F.when(qty_d == F.floor(qty_d), qty_d).try_cast("int"),
            "event_date": F.to_date(F.col("event_ts")),
            "reason": reason,
        }
    )


ADAPTERS = {
    "taobao": Adapter("taobao", read_taobao, taobao_to_canonical),
    "rees46": Adapter("rees46", read_rees46, rees46_to_canonical),
}
FORMATS = ("generic", "taobao", "rees46")
