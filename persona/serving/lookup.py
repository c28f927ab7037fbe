"""Reading features back: online per user, and point in time for training sets.

Input: user ids (online), or an entity file or frame with ``user_id`` and
``event_timestamp`` (offline). Output: one flat feature dict per requested user from
the online store (Feast's SDK, no Spark); for entity rows, one row per entity row with
each view's latest snapshot at or before its timestamp and within the ttl (Feast's
Spark offline store), as a lazy Spark DataFrame or written to Parquet/CSV.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType

from core.errors import InputError
from persona.serving.store import (
    DEFAULT_SERVICE,
    ENTITY,
    feast_spark,
    feature_service,
    get_store,
    session_for,
    user_errors,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from core.settings import Settings


def get_online(settings: "Settings", users: Sequence[str], service: str = DEFAULT_SERVICE) -> list[dict]:
    """Online features of ``service`` for each user: one flat dict per user, in order.

    An unknown (or not yet materialized) user gets ``None`` for every feature; see
    :func:`missing`. No Spark involved: this is Feast's SDK against the online store.
    """
    if not users:
        return []
    store = get_store(settings)
    with user_errors(settings):
        fs = feature_service(settings, service)
        columns = store.get_online_features(
            features=fs, entity_rows=[{ENTITY: str(u)} for u in users]
        ).to_dict()
    names = [k for k in columns if k != ENTITY]
    return [{ENTITY: str(u), **{k: columns[k][i] for k in names}} for i, u in enumerate(users)]


def missing(row: dict) -> bool:
    """True when the online store had nothing for this user (every feature is null)."""
    return all(v is None for k, v in row.items() if k != ENTITY)


def read_entities(spark: "SparkSession", path: str | os.PathLike) -> DataFrame:
    """An entity file (csv with header, parquet, json lines) -> (user_id, event_timestamp, ...)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"entity file not found: {p}")
    suffix = (p.suffix if p.is_file() else "").lower()
    reader = spark.read
    if suffix in (".csv", ".txt"):
        df = reader.option("header", True).csv(str(p))
    elif suffix in (".json", ".jsonl", ".ndjson"):
        df = reader.json(str(p))
    else:
        df = reader.parquet(str(p))
    need = {ENTITY, "event_timestamp"} - set(df.columns)
    if need:
        raise InputError(f"entity file {p} lacks column(s) {', '.join(sorted(need))} "
                         f"(has {', '.join(df.columns)})")
    df = df.withColumn(ENTITY, F.col(ENTITY).cast("string")).withColumn(
        "event_timestamp", F.col("event_timestamp").cast("timestamp"))
    bad = df.filter(F.col("event_timestamp").isNull() | F.col(ENTITY).isNull()).limit(1).count()
    if bad:
        raise InputError(f"entity file {p} has rows with a null user_id or an unparsable event_timestamp")
    return df


def historical(
    settings: "Settings",
    entities: "DataFrame | Any",
    service: str = DEFAULT_SERVICE,
    spark: "SparkSession | None" = None,
) -> DataFrame:
    """Point-in-time correct features for each entity row (Feast's Spark offline store).

    ``entities``: a Spark or pandas frame with ``user_id`` and ``event_timestamp``. Each
    row gets, per view, the latest snapshot with ``event_timestamp`` at or before its own
    and no older than the ttl (else nulls). Returns a lazy Spark DataFrame; call inside
    no context (the SQL is parsed here, with Feast's parser setting, then restored).
    """
    session = session_for(settings, spark)
    store = get_store(settings)
    if not isinstance(entities, DataFrame):
        entities = session.createDataFrame(entities)
    with user_errors(settings), feast_spark(session):
        fs = feature_service(settings, service)
        job = store.get_historical_features(entity_df=entities, features=fs, full_feature_names=False)
        return job.to_spark_df()


def training_set(
    settings: "Settings",
    entities: "str | os.PathLike | DataFrame",
    out: str | os.PathLike,
    service: str = DEFAULT_SERVICE,
    spark: "SparkSession | None" = None,
) -> dict:
    """Write the point-in-time training set for an entity file (or frame) to ``out``.

    ``out`` ending in ``.csv``: one CSV directory with a header (vectors as JSON text);
    anything else: a Parquet directory. Returns rows, columns, path and seconds.
    """
    session = session_for(settings, spark)
    t0 = time.perf_counter()
    if isinstance(entities, (str, os.PathLike)):
        entities = read_entities(session, entities)
    df = historical(settings, entities, service, session)
    out_path = str(out)
    with feast_spark(session):
        if out_path.lower().endswith(".csv"):
            for field in df.schema.fields:
                if isinstance(field.dataType, ArrayType):
                    df = df.withColumn(field.name, F.to_json(field.name))
            df.coalesce(1).write.mode("overwrite").option("header", True).csv(out_path)
        else:
            df.write.mode("overwrite").parquet(out_path)
        rows = session.read.parquet(out_path).count() if not out_path.lower().endswith(".csv") else \
            session.read.option("header", True).csv(out_path).count()
    return {"rows": rows, "columns": df.columns, "out": out_path,
            "seconds": round(time.perf_counter() - t0, 3), "service": service}
