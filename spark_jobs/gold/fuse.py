"""Profile fusion, the job: behaviour aggregates + sequence embedding -> profile vector + segment.

Input:  ``silver.user_behaviour`` and ``gold.user_embeddings`` joined on
        ``(user_id, as_of_date)`` (inner join: a user without an embedding that day has
        no profile that day, counted in the summary).
Output: ``gold.user_profiles``, partitioned by ``as_of_date``; a run owns exactly one day
        and replaces it (``replaceWhere``).
Grain:  one row per user per as_of_date.
Model:  a Spark ML ``PipelineModel`` per fusion version (``fusion_store``: v1, v2, ...):
        volume-free inputs, scaler, block weights, PCA(k) whose scores are
        ``profile_vec``, then BisectingKMeans on a whitened subspace for ``segment_id``
        (built by ``fusion_model``, fitted by ``fusion_fit``). A day applies the latest
        version fitted on its encoder version; the first day, a new encoder or
        ``refit`` fits a new one.

Why it is built this way, with the measurements: docs/fusion.md.
"""

from __future__ import annotations

import datetime as dt
import time

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.dates import parse_date
from core.errors import InputError, NotBuiltError
from spark_jobs import delta_io
from spark_jobs.gold.fusion_fit import fit_fusion
from spark_jobs.gold.fusion_model import PCA_VEC, SEGMENT
from spark_jobs.gold.fusion_store import MODEL_KIND, latest_version, load_fusion, save_fusion
from spark_jobs.schemas import USER_PROFILES

BEHAVIOUR_TABLE = "silver.user_behaviour"
EMBEDDINGS_TABLE = "gold.user_embeddings"
PROFILES_TABLE = "gold.user_profiles"


# ---------------------------------------------------------------- pure transforms
def fusion_input(behaviour: DataFrame, embeddings: DataFrame) -> DataFrame:
    """Behaviour rows with that day's ``user_emb`` and ``encoder_version`` attached.

    Grain: one row per (user_id, as_of_date) present in both tables. The behaviour row's
    ``event_timestamp`` is the one the profile carries.
    """
    emb = embeddings.select("user_id", "as_of_date", "user_emb", "encoder_version")
    return behaviour.join(emb, ["user_id", "as_of_date"], "inner")


def profiles_from_scored(scored: DataFrame, fusion_version: str) -> DataFrame:
    """Pipeline output -> gold.user_profiles rows (one per user per as_of_date)."""
    return scored.select(
        "user_id",
        "as_of_date",
        "event_timestamp",
        F.current_timestamp().alias("created_timestamp"),
        vector_to_array(F.col(PCA_VEC), dtype="float32").alias("profile_vec"),
        F.col(SEGMENT).cast("int").alias("segment_id"),
        F.lit(fusion_version).alias("fusion_version"),
        "encoder_version",
    )


# ---------------------------------------------------------------- reading inputs
def resolve_as_of(requested, available: list[dt.date], what: str) -> dt.date:
    """The requested day if present, else the latest; a clear error when there is none."""
    if not available:
        raise NotBuiltError(f"{what} is empty")
    day = parse_date(requested, "the as-of day")
    if day is None:
        return available[-1]
    if day not in available:
        raise InputError(
            f"no {what} rows for as-of {day} (available: {available[0]} .. {available[-1]}, {len(available)} days)"
        )
    return day


def read_inputs(spark: SparkSession, settings) -> tuple[DataFrame, DataFrame]:
    behaviour = delta_io.read(spark, settings.table(BEHAVIOUR_TABLE), f"{BEHAVIOUR_TABLE}: run `persona build` or `persona backfill` first")
    embeddings = delta_io.read(spark, settings.table(EMBEDDINGS_TABLE), f"{EMBEDDINGS_TABLE}: run `persona embed`")
    return behaviour, embeddings


def input_dates(spark: SparkSession, settings) -> list[dt.date]:
    """Days present in both behaviour and embeddings."""
    read_inputs(spark, settings)  # the NotBuiltError naming the missing step
    b = set(delta_io.partition_values(spark, settings.table(BEHAVIOUR_TABLE), "as_of_date"))
    e = set(delta_io.partition_values(spark, settings.table(EMBEDDINGS_TABLE), "as_of_date"))
    return sorted(b & e)


def read_profiles(spark: SparkSession, settings) -> DataFrame:
    return delta_io.read(spark, settings.table(PROFILES_TABLE), f"{PROFILES_TABLE}: run `persona fuse`")


def profile_dates(spark: SparkSession, settings) -> list[dt.date]:
    read_profiles(spark, settings)
    return delta_io.partition_values(spark, settings.table(PROFILES_TABLE), "as_of_date")


def day_input(spark: SparkSession, settings, as_of: dt.date) -> DataFrame:
    behaviour, embeddings = read_inputs(spark, settings)
    day = F.lit(as_of)
    return fusion_input(behaviour.where(F.col("as_of_date") == day), embeddings.where(F.col("as_of_date") == day))


def check_compatible(df: DataFrame, metrics: dict, as_of: dt.date) -> None:
    """Refuse to project embeddings the saved model was not fitted on."""
    rows = df.select(F.size("user_emb").alias("d"), "encoder_version").distinct().collect()
    dims = sorted({r["d"] for r in rows})
    encoders = sorted({r["encoder_version"] for r in rows})
    version = metrics.get("version", "?")
    if dims != [metrics["embedding_dim"]]:
        raise InputError(
            f"embeddings on {as_of} have size {dims} but fusion model {version} expects "
            f"{metrics['embedding_dim']}; run `persona fuse --refit`"
        )
    if encoders != [metrics["encoder_version"]]:
        raise InputError(
            f"embeddings on {as_of} come from encoder {', '.join(encoders)} but fusion model {version} was "
            f"fitted on {metrics['encoder_version']}; run `persona fuse --refit`"
        )


# ---------------------------------------------------------------- the job
def run_fuse(spark: SparkSession, settings, as_of=None, refit: bool = False) -> dict:
    """Fuse one day (default: the latest with behaviour and embeddings) into gold.user_profiles.

    Applies the latest saved fusion version fitted on the same encoder version as the
    day's embeddings. It fits (and saves) a new version first when ``refit`` is set or
    when there is none for that encoder: a new encoder means a new embedding space, so
    a fusion model fitted on another one cannot be applied; the summary's
    ``fit_reason`` says which. Re-running a day replaces that day only.
    """
    t0 = time.perf_counter()
    day = resolve_as_of(as_of, input_dates(spark, settings), "behaviour+embeddings")
    behaviour, _ = read_inputs(spark, settings)
    df = day_input(spark, settings, day).cache()
    try:
        users = df.count()
        if users == 0:
            raise InputError(f"no user has both behaviour and an embedding on {day}; run `persona embed --as-of {day}`")
        behaviour_users = behaviour.where(F.col("as_of_date") == F.lit(day)).count()
        encoders = sorted(r[0] for r in df.select("encoder_version").distinct().collect())
        if len(encoders) != 1:
            raise InputError(
                f"embeddings on {day} come from several encoder versions {encoders}; re-run `persona embed --as-of {day}`"
            )
        version = None if refit else latest_version(settings, encoders[0])
        fitted = version is None
        fit_reason = None
        if refit:
            fit_reason = "refit requested"
        elif fitted:
            fit_reason = ("no fusion model yet" if latest_version(settings) is None
                          else f"no fusion model for encoder {encoders[0]} yet")
        fit_seconds = 0.0
        if fitted:
            t_fit = time.perf_counter()
            model, metrics = fit_fusion(spark, df, settings.fusion, day)
            version = save_fusion(settings, model, metrics)
            fit_seconds = time.perf_counter() - t_fit
        model, metrics = load_fusion(settings, version)
        check_compatible(df, metrics, day)
        out = profiles_from_scored(model.transform(df), version).cache()
        try:
            path = settings.table(PROFILES_TABLE)
            delta_io.replace_where(out, path, USER_PROFILES, "as_of_date", day, day)
            sizes = {int(r[0]): int(r[1]) for r in out.groupBy("segment_id").count().collect()}
        finally:
            out.unpersist()
    finally:
        df.unpersist()
    return {
        "as_of": day.isoformat(),
        "users": users,
        "users_without_embedding": max(0, behaviour_users - users),
        "fusion_version": version,
        "fitted": fitted,
        "fit_reason": fit_reason,
        "fit_seconds": round(fit_seconds, 2),
        "k": metrics["k"],
        "explained_variance": round(metrics["cumulative_explained_variance"], 4),
        "n_segments": metrics["n_segments"],
        "silhouette": round(metrics["silhouette"], 4),
        "segment_sizes": dict(sorted(sizes.items())),
        "table": settings.table(PROFILES_TABLE),
        "model_dir": str(settings.model_dir(MODEL_KIND, version)),
        "seconds": round(time.perf_counter() - t0, 2),
    }


run = run_fuse
