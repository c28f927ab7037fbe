"""Every table's schema, in one place: jobs ``select`` to these before writing, so a
table never drifts by accident. Column names are a contract with analysts, Feast and
the tests.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from core import tables


# bronze.events: one row per behaviour event, partitioned by event_date.
EVENTS = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("item_id", StringType(), True),
        StructField("category_id", StringType(), True),
        StructField("event_type", StringType(), False),
        StructField("event_ts", TimestampType(), False),
        StructField("event_date", DateType(), False),
        StructField("price", DoubleType(), True),
        StructField("quantity", IntegerType(), True),
        StructField("session_id", StringType(), True),
        StructField("query", StringType(), True),
        StructField("brand", StringType(), True),
        StructField("source", StringType(), True),
        StructField("ingested_at", TimestampType(), False),
    ]
)

# bronze.events_quarantine: one row per rejected input record, with why.
QUARANTINE = StructType(
    [
        StructField("raw_record", StringType(), True),
        StructField("reason", StringType(), False),
        StructField("source_file", StringType(), True),
        StructField("source_format", StringType(), False),
        StructField("record_hash", StringType(), False),
        StructField("ingested_at", TimestampType(), False),
        StructField("ingest_date", DateType(), False),
    ]
)

_COUNT = ("views_1d", "views_7d", "views_30d", "clicks_7d", "searches_7d", "carts_7d",
          "carts_30d", "favs_7d", "favs_30d", "purchases_7d", "purchases_30d")

# silver.user_behaviour: one row per user per as_of_date, partitioned by as_of_date.
USER_BEHAVIOUR = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("as_of_date", DateType(), False),
        StructField("event_timestamp", TimestampType(), False),
        StructField("created_timestamp", TimestampType(), False),
        *[StructField(c, LongType(), False) for c in _COUNT],
        StructField("distinct_items_30d", LongType(), False),
        StructField("distinct_categories_30d", LongType(), False),
        StructField("distinct_queries_30d", LongType(), False),
        StructField("spend_30d", DoubleType(), False),
        StructField("avg_purchase_price_30d", DoubleType(), True),
        StructField("cart_rate_30d", DoubleType(), True),
        StructField("purchase_rate_30d", DoubleType(), True),
        StructField("cart_to_purchase_30d", DoubleType(), True),
        StructField("days_since_last_event", IntegerType(), False),
        StructField("days_since_last_purchase", IntegerType(), True),
        StructField("active_days_30d", LongType(), False),
        StructField("sessions_30d", LongType(), False),
        StructField("avg_session_events_30d", DoubleType(), True),
        StructField("night_share_30d", DoubleType(), True),
        StructField("top_categories_30d", ArrayType(StringType(), False), False),
        StructField("top_category_share_30d", DoubleType(), True),
        StructField("top_brand_share_30d", DoubleType(), True),
    ]
)

# silver.user_sequences: per user per as_of_date, the last `sequence_length` events up to
# the end of the day, oldest first, right-padded to exactly sequence_length with ""
# (ids, types) and 0.0 (gaps). seq_len counts the real events.
USER_SEQUENCES = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("as_of_date", DateType(), False),
        StructField("event_timestamp", TimestampType(), False),
        StructField("created_timestamp", TimestampType(), False),
        StructField("item_ids", ArrayType(StringType(), False), False),
        StructField("category_ids", ArrayType(StringType(), False), False),
        StructField("event_types", ArrayType(StringType(), False), False),
        StructField("gap_seconds", ArrayType(FloatType(), False), False),
        StructField("seq_len", IntegerType(), False),
    ]
)

# silver.user_daily: the behaviour job's daily partial aggregates, one row per
# (user_id, kind, key, event_date), partitioned by event_date (see spark_jobs/silver/partials.py).
# kind 0 (key "") carries the day's additive partials; the other kinds (item, category,
# query, source session, brand) only their summed interest weight in `score`.
USER_DAILY = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("event_date", DateType(), False),
        StructField("kind", IntegerType(), False),
        StructField("key", StringType(), False),
        StructField("score", LongType(), True),
        *[StructField(c, LongType(), True) for c in (
            "n_view", "n_click", "n_search", "n_cart", "n_fav", "n_purchase", "n_events", "n_night")],
        StructField("spend", DoubleType(), True),
        StructField("price_sum", DoubleType(), True),
        *[StructField(c, LongType(), True) for c in (
            "price_n", "cat_score", "brand_score", "gap_starts", "first_gap_us", "last_gap_us")],
        # kind 0: the latest ingested_at of the day's events (what the partial was
        # computed from; as in silver.user_behaviour, whose created_timestamp is its max).
        StructField("created_timestamp", TimestampType(), True),
    ]
)

# gold.user_embeddings: one row per user per as_of_date.
USER_EMBEDDINGS = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("as_of_date", DateType(), False),
        StructField("event_timestamp", TimestampType(), False),
        StructField("created_timestamp", TimestampType(), False),
        StructField("user_emb", ArrayType(FloatType(), False), False),
        StructField("encoder_version", StringType(), False),
    ]
)

# gold.user_profiles: one row per user per as_of_date.
USER_PROFILES = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("as_of_date", DateType(), False),
        StructField("event_timestamp", TimestampType(), False),
        StructField("created_timestamp", TimestampType(), False),
        StructField("profile_vec", ArrayType(FloatType(), False), False),
        StructField("segment_id", IntegerType(), False),
        StructField("fusion_version", StringType(), False),
        StructField("encoder_version", StringType(), False),
    ]
)

SCHEMAS: dict[str, StructType] = {
    "bronze.events": EVENTS,
    "bronze.events_quarantine": QUARANTINE,
    "silver.user_behaviour": USER_BEHAVIOUR,
    "silver.user_sequences": USER_SEQUENCES,
    "silver.user_daily": USER_DAILY,
    "gold.user_embeddings": USER_EMBEDDINGS,
    "gold.user_profiles": USER_PROFILES,
}
# Every table of the registry (core.tables) with its schema and partition columns.
TABLES: dict[str, tuple[StructType, list[str]]] = {
    name: (SCHEMAS[name], [table.partition_by]) for name, table in tables.TABLES.items()
}


def conform(df: DataFrame, schema: StructType) -> DataFrame:
    """Select and cast ``df`` to exactly ``schema``'s columns, in order.

    Nullability is part of the contract but Spark only tracks it loosely; the cast
    keeps names and types exact, which is what readers depend on.
    """
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing} required by the table schema")
    have = {f.name: f.dataType for f in df.schema.fields}
    cols = []
    for f in schema.fields:
        if _relaxed(have[f.name]) == _relaxed(f.dataType):
            cols.append(F.col(f.name))  # same type; element nullability is not castable
        else:
            cols.append(F.col(f.name).cast(_relaxed(f.dataType)).alias(f.name))
    return df.select(*cols)


def _relaxed(dtype):
    """The type with every nested ``containsNull`` / ``valueContainsNull`` set to True:
    Spark refuses to cast array<float> to array<float NOT NULL>, and element
    nullability is not what readers depend on."""
    if isinstance(dtype, ArrayType):
        return ArrayType(_relaxed(dtype.elementType), True)
    if isinstance(dtype, StructType):
        return StructType([StructField(f.name, _relaxed(f.dataType), True) for f in dtype.fields])
    return dtype
