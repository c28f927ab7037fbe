"""Encoder jobs: train on ``silver.user_sequences``, apply in Spark to ``gold.user_embeddings``.

Input: ``silver.user_sequences`` (one row per user per as_of_date; see USER_SEQUENCES)
and a trained encoder version under ``<home>/models/encoder/``.
Output: ``gold.user_embeddings`` (one row per user per as_of_date; partitioned by
as_of_date, written with replaceWhere so re-running a day replaces exactly that day):
``user_id, as_of_date, event_timestamp, created_timestamp, user_emb, encoder_version``.

Inference runs in Python workers over Arrow batches (``mapInPandas``, iterator form; or
``mapInArrow`` with ``settings.encoder.udf = "arrow"``, which skips the pandas conversion
of the list columns) and calls :func:`encoders.predict.load` / the same numpy predict
function the tests call without Spark. What keeps it near in-process speed on a small machine:
- the model is loaded once per (reused) Python worker, cached by path, not per batch
  or partition (``spark.python.worker.reuse`` is on in the session factory);
- TensorFlow gets ``settings.encoder.threads_per_task`` threads (the cores one task
  owns), set before TF initialises in the worker: two workers each using every core
  fight over the cores;
- Arrow batches of ``settings.encoder.arrow_batch_size`` rows, and at least one
  partition per core so every core has a task.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import Window

from core.dates import parse_date
from core.errors import InputError, NotBuiltError
from encoders import data, predict
from spark_jobs import delta_io
from spark_jobs.schemas import USER_EMBEDDINGS

SEQUENCES = "silver.user_sequences"
EMBEDDINGS = "gold.user_embeddings"
KEY_COLUMNS = ("user_id", "as_of_date", "event_timestamp")
ARRAY_COLUMNS = ("item_ids", "category_ids", "event_types", "gap_seconds")
UDF_SCHEMA = "user_id string, as_of_date date, event_timestamp timestamp, user_emb array<float>"


# ---- model versions -------------------------------------------------------------------
def encoder_root(settings) -> Path:
    return settings.models_root("encoder")


def resolve_model(settings, version: str | None = None) -> Path:
    """The version directory for ``version`` (default ``latest``), or a NotBuiltError."""
    try:
        return predict.encoder_registry(encoder_root(settings)).resolve(version)
    except FileNotFoundError as exc:
        raise NotBuiltError(f"{exc} (run `persona train-encoder` first)") from None


# ---- the pure transform ---------------------------------------------------------------
def _worker_encoder(model_path: str, threads: int, shipped: str | None) -> predict.LoadedEncoder:
    """The encoder in a Python worker: TF threads sized first, then the model loaded once
    per (reused) worker (``predict.load`` caches by path), from the copy shipped to this
    executor (``shipped``: the name ``SparkContext.addFile`` sent it under) or, in local
    mode, from the driver's path."""
    # Before the first TF op in this worker; a reused worker keeps both settings.
    predict.configure_threads(threads)
    return predict.load(SparkFiles.get(shipped) if shipped else model_path)


def _embed_batches(model_path: str, threads: int, chunk: int, shipped: str | None = None):
    """The function each Python worker runs over its Arrow batches (as pandas).

    ``shipped``: the name the model was shipped under (``SparkContext.addFile``); the
    worker then loads its local copy instead of the driver's path."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        t0 = time.perf_counter()
        encoder = _worker_encoder(model_path, threads, shipped)
        t_load, t_conv, t_pred, rows = time.perf_counter() - t0, 0.0, 0.0, 0
        for pdf in batches:
            t1 = time.perf_counter()
            seqs = data.from_frame(pdf)
            t2 = time.perf_counter()
            emb = encoder(seqs.item_ids, seqs.category_ids, seqs.event_types, seqs.gap_seconds,
                          chunk=chunk)
            t_conv, t_pred, rows = t_conv + t2 - t1, t_pred + time.perf_counter() - t2, rows + len(pdf)
            yield pd.DataFrame({
                "user_id": pdf["user_id"],
                "as_of_date": pdf["as_of_date"],
                "event_timestamp": pdf["event_timestamp"],
                "user_emb": list(emb),
            })
        if os.environ.get("PERSONA_EMBED_PROFILE") == "1":
            # Diagnostics: where a task's time goes (worker stderr; the driver's in local mode).
            print(f"[embed pid {os.getpid()}] rows {rows} load {t_load:.2f}s convert {t_conv:.2f}s "
                  f"predict {t_pred:.2f}s task {time.perf_counter() - t0:.2f}s", file=sys.stderr, flush=True)

    return run


def _embed_arrow_batches(model_path: str, threads: int, chunk: int, shipped: str | None = None):
    """The same per-worker function over raw Arrow batches (``mapInArrow``): fixed-length
    lists reshape to ``(N, L)`` without a pandas object per row, and the output vectors
    go back as one flat float buffer."""

    def run(batches):
        t0 = time.perf_counter()
        encoder = _worker_encoder(model_path, threads, shipped)
        t_load, t_conv, t_pred, t_wait, rows = time.perf_counter() - t0, 0.0, 0.0, 0.0, 0
        t_next = time.perf_counter()
        for batch in batches:
            t1 = time.perf_counter()
            seqs = data.from_arrow(batch)
            t2 = time.perf_counter()
            emb = encoder(seqs.item_ids, seqs.category_ids, seqs.event_types, seqs.gap_seconds, chunk=chunk)
            t3 = time.perf_counter()
            t_wait, t_conv, t_pred = t_wait + t1 - t_next, t_conv + t2 - t1, t_pred + t3 - t2
            rows += batch.num_rows
            n, d = emb.shape
            offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
            vectors = pa.ListArray.from_arrays(offsets, pa.array(emb.reshape(-1), type=pa.float32()))
            yield pa.RecordBatch.from_arrays(
                [batch.column("user_id"), batch.column("as_of_date"), batch.column("event_timestamp"), vectors],
                names=["user_id", "as_of_date", "event_timestamp", "user_emb"],
            )
            t_next = time.perf_counter()
        if os.environ.get("PERSONA_EMBED_PROFILE") == "1":
            # wait: time blocked on the JVM for the next batch (or on the consumer of ours).
            print(f"[embed-arrow pid {os.getpid()}] rows {rows} load {t_load:.2f}s wait {t_wait:.2f}s "
                  f"convert {t_conv:.2f}s predict {t_pred:.2f}s task {time.perf_counter() - t0:.2f}s",
                  file=sys.stderr, flush=True)

    return run


def embed_sequences(
    sequences: DataFrame,
    model_dir: str | Path,
    threads_per_task: int = 1,
    min_partitions: int = 1,
    chunk: int = 4096,
    udf: str = "pandas",
) -> DataFrame:
    """``silver.user_sequences`` rows -> ``gold.user_embeddings`` rows (same grain)."""
    model_dir = Path(model_dir)
    model_path = str((model_dir / "model.keras").resolve())
    df = sequences.select(*KEY_COLUMNS, *ARRAY_COLUMNS)
    if min_partitions > 1 and df.rdd.getNumPartitions() < min_partitions:
        # One file for a day would otherwise mean one task, one busy core.
        df = df.repartition(min_partitions)
    shipped = ship_model(df.sparkSession, model_dir)
    if udf == "arrow":
        out = df.mapInArrow(_embed_arrow_batches(model_path, threads_per_task, chunk, shipped), UDF_SCHEMA)
    else:
        out = df.mapInPandas(_embed_batches(model_path, threads_per_task, chunk, shipped), UDF_SCHEMA)
    return out.select(
        *KEY_COLUMNS,
        F.current_timestamp().alias("created_timestamp"),
        "user_emb",
        F.lit(model_dir.name).alias("encoder_version"),
    )


def ship_model(spark: SparkSession, model_dir: Path) -> str | None:
    """On a cluster, send the model file to every executor (``addFile``) and return the
    name workers fetch it by; None in local mode, where workers read the driver's path.
    The name carries the version: one session may embed with several versions."""
    if spark.sparkContext.master.startswith("local"):
        return None
    name = f"encoder-{model_dir.name}.keras"
    staged = Path(tempfile.gettempdir()) / "persona-models" / model_dir.name / name
    if not staged.is_file():
        staged.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged.with_suffix(".tmp")
        shutil.copyfile(model_dir / "model.keras", tmp)
        tmp.replace(staged)
    spark.sparkContext.addFile(str(staged))
    return name


# ---- jobs -----------------------------------------------------------------------------
def _read_sequences(spark: SparkSession, settings) -> DataFrame:
    return delta_io.read(spark, settings.table(SEQUENCES), "run `persona build` first")


def _latest_as_of(df: DataFrame) -> dt.date:
    latest = df.agg(F.max("as_of_date")).first()[0]
    if latest is None:
        raise NotBuiltError(f"{SEQUENCES} is empty (run `persona build` first)")
    return latest


def run(
    spark: SparkSession,
    settings,
    as_of=None,
    start=None,
    end=None,
    version: str | None = None,
) -> dict:
    """Embed every user's sequence for ``as_of`` (or each day in ``start..end``; default:
    the latest sequences day) with encoder ``version`` (default latest); replace those
    days in ``gold.user_embeddings``. Returns a summary."""
    t0 = time.perf_counter()
    seqs = _read_sequences(spark, settings)
    as_of, start, end = parse_date(as_of, "--as-of"), parse_date(start, "--start"), parse_date(end, "--end")
    if as_of is not None:
        start = end = as_of
    if start is None and end is None:
        start = end = _latest_as_of(seqs)
    start, end = start or end, end or start
    if start > end:
        raise InputError(f"start {start} is after end {end}")
    model_dir = resolve_model(settings, version)
    days = seqs.where((F.col("as_of_date") >= F.lit(start)) & (F.col("as_of_date") <= F.lit(end)))
    if days.limit(1).count() == 0:  # partition-pruned: reads at most one file
        raise NotBuiltError(f"no sequences between {start} and {end} in {SEQUENCES}")

    cfg = settings.encoder
    cores = spark.sparkContext.defaultParallelism
    conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(conf_key, None)
    if cfg.arrow_batch_size:
        spark.conf.set(conf_key, str(cfg.arrow_batch_size))
    try:
        out = embed_sequences(days, model_dir, cfg.threads_per_task, cores, cfg.predict_chunk, cfg.udf)
        t_write = time.perf_counter()
        delta_io.replace_where(out, settings.table(EMBEDDINGS), USER_EMBEDDINGS, "as_of_date", start, end)
        t_write = time.perf_counter() - t_write
    finally:
        if cfg.arrow_batch_size:
            if previous is None:
                spark.conf.unset(conf_key)
            else:
                spark.conf.set(conf_key, previous)
    written = delta_io.commit_rows(spark, settings.table(EMBEDDINGS))
    if written is None:  # no commit metrics: count what is there
        written = (
            spark.read.format("delta").load(settings.table(EMBEDDINGS))
            .where((F.col("as_of_date") >= F.lit(start)) & (F.col("as_of_date") <= F.lit(end)))
            .count()
        )
    return {
        "table": EMBEDDINGS,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "rows": int(written),
        "encoder_version": model_dir.name,
        "seconds": round(time.perf_counter() - t0, 2),
        # The Spark job itself (scan, UDF, Delta write); the rest is planning and metadata.
        "write_job_seconds": round(t_write, 2),
    }


def training_sequences(spark: SparkSession, settings, as_of=None) -> tuple[pd.DataFrame, dict]:
    """Each user's latest sequence up to ``as_of`` (default: the latest day), as pandas,
    plus the data range it covers."""
    seqs = _read_sequences(spark, settings)
    as_of = parse_date(as_of, "--as-of") or _latest_as_of(seqs)
    upto = seqs.where(F.col("as_of_date") <= F.lit(as_of))
    w = Window.partitionBy("user_id").orderBy(F.col("as_of_date").desc())
    latest = (
        upto.withColumn("_rn", F.row_number().over(w)).where("_rn = 1")
        .select("user_id", "as_of_date", *ARRAY_COLUMNS)
    )
    pdf = latest.toPandas()
    if pdf.empty:
        raise NotBuiltError(f"no sequences up to {as_of} in {SEQUENCES}")
    data_range = {
        "as_of": as_of.isoformat(),
        "first_as_of_date": str(pdf["as_of_date"].min()),
        "last_as_of_date": str(pdf["as_of_date"].max()),
        "table": settings.table(SEQUENCES),
    }
    return pdf, data_range


def train(spark: SparkSession, settings, as_of=None, log=None) -> dict:
    """Train a new encoder version on the sequences up to ``as_of``; returns a summary."""
    # deferred: encoders.model and encoders.train import Keras/TensorFlow, which
    # embedding (this module's other job) never needs on the driver.
    from encoders.model import EncoderParams
    from encoders.train import train as fit

    pdf, data_range = training_sequences(spark, settings, as_of)
    seqs = data.from_frame(pdf)
    try:
        result = fit(seqs, EncoderParams.from_mapping(settings.encoder), encoder_root(settings),
                     data_range=data_range, log=log)
    except ValueError as exc:
        raise InputError(f"cannot train the encoder: {exc}") from None
    ev = result.metrics["evaluation"]
    return {
        "encoder_version": result.version,
        "path": str(result.path),
        "as_of": data_range["as_of"],
        "users": result.metrics["data"]["users"],
        "evaluated_users": ev["users"],
        **{k: round(v, 4) for k, v in ev.items() if k != "users"},
        "seconds": result.metrics["training"]["seconds"],
    }
