"""Export one day of profiles to a single local file (``persona export``).

Input:  gold.user_profiles for one as_of_date (default: the latest) and that day's
        silver.user_behaviour rows.
Output: one csv, JSON lines or parquet file: one row per user of that day with its keys,
        segment, profile_vec, model versions and behaviour columns.
Grain:  one row per user per as_of_date (the profile's grain).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import InputError
from core.fs import writable_file
from spark_jobs import delta_io
from spark_jobs.gold.fuse import BEHAVIOUR_TABLE, PROFILES_TABLE, profile_dates, read_profiles, resolve_as_of
from spark_jobs.gold.fusion_model import KEY_COLUMNS
from spark_jobs.schemas import USER_BEHAVIOUR

EXPORT_FORMATS = ("csv", "json", "parquet")


def check_export_target(fmt: str, out) -> tuple[str, Path]:
    """Validate format and path before any Spark work: one clear line on failure."""
    fmt = (fmt or "").lower()
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    return fmt, writable_file(out)


def export_frame(profiles: DataFrame, behaviour: DataFrame) -> DataFrame:
    """One row per profile: keys, segment, profile_vec, versions, then behaviour columns."""
    extra = [f.name for f in USER_BEHAVIOUR.fields if f.name not in KEY_COLUMNS]
    b = behaviour.select("user_id", "as_of_date", *extra)
    p = profiles.select("user_id", "as_of_date", "segment_id", "profile_vec", "fusion_version", "encoder_version")
    return p.join(b, ["user_id", "as_of_date"], "left").orderBy("user_id")


def export_profiles(spark: SparkSession, settings, fmt: str, out, as_of=None) -> dict:
    """Write one day's profiles to a single local file (csv, JSON lines or parquet)."""
    fmt, path = check_export_target(fmt, out)
    day = resolve_as_of(as_of, profile_dates(spark, settings), PROFILES_TABLE)
    profiles = read_profiles(spark, settings).where(F.col("as_of_date") == F.lit(day))
    behaviour = delta_io.read(spark, settings.table(BEHAVIOUR_TABLE), BEHAVIOUR_TABLE)
    frame = export_frame(profiles, behaviour.where(F.col("as_of_date") == F.lit(day)))
    if fmt == "csv":
        # CSV has no arrays: they travel as JSON text ("[0.12,-1.5]").
        arrays = [f.name for f in frame.schema.fields if f.dataType.typeName() == "array"]
        frame = frame.select(*[F.to_json(c).alias(c) if c in arrays else F.col(c) for c in frame.columns])
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # One file, written by one task: fine for a per-day profile export, and it keeps
        # the driver's memory out of it (no toPandas).
        writer = frame.coalesce(1).write.mode("overwrite")
        if fmt == "csv":
            # RFC 4180 quoting (doubled quotes), which pandas, DuckDB and spreadsheets read.
            writer.option("header", "true").option("escape", '"').csv(str(tmp))
        elif fmt == "json":
            writer.option("ignoreNullFields", "false").json(str(tmp))
        else:
            writer.parquet(str(tmp))
        parts = sorted(p for p in tmp.iterdir() if p.name.startswith("part-"))
        if len(parts) != 1:
            raise InputError(f"export produced {len(parts)} files instead of one")
        os.replace(parts[0], path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = profiles.count()
    return {"as_of": day.isoformat(), "format": fmt, "path": str(path), "rows": rows, "bytes": path.stat().st_size}
