"""A Feast batch (materialization) engine that writes Feast's own online format fast.

Input: Feast materialization tasks (one per feature view and time window). Output: the
latest row per user of each view in Feast's online store, byte-for-byte what Feast's
``RedisOnlineStore.online_write_batch`` writes, so every Feast client reads it.

Feast drives it like any engine (``batch_engine: {type: persona.serving.engine.PersonaSparkEngine}``):
``FeatureStore.materialize[_incremental]`` computes the windows and records them in the
registry. The offline query is Feast's own (``pull_latest_from_table_or_query``: latest
row per user in the window, ties broken by ``created_timestamp``); the Spark executors
then encode each Arrow batch column-wise into Redis ``HSET`` commands
(``persona/serving/redis_codec.py``) and stream them through one pipelined connection
per partition. On a local master the driver writes instead, and reads the same
selection with delta-rs + pyarrow (``read_with``; local Delta tables without deletion
vectors or column mapping), because Spark's fixed cost per query was most of a
materialization. Why: Feast's engines build one protobuf object per value in Python
and read every key's timestamp before writing it (about 2.6k users/s here). SQLite and
other stores go through Feast's standard conversion and ``online_write_batch`` on the
driver.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial, reduce
from typing import Callable, Literal, Optional

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from feast.infra.common.materialization_job import (
    MaterializationJob,
    MaterializationJobStatus,
    MaterializationTask,
)
from feast.infra.compute_engines.base import ComputeEngine
from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkRetrievalJob
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType
from feast.repo_config import FeastConfigBaseModel
from feast.table_format import DeltaFormat
from feast.utils import _convert_arrow_to_proto, _get_column_names
from pyspark.sql import functions as F

from core.delta_log import is_local_path, plain_parquet_blockers
from persona.serving.redis_codec import RedisTarget, ViewLayout, redis_target, write_batches

# Set by persona.serving.materialize.materialize: called as progress(label, done, total) with Spark
# tasks (Redis path) or write batches (Feast path) as the unit.
PROGRESS: Optional[Callable[[str, int, int], None]] = None

ENGINE_TYPE = "persona.serving.engine.PersonaSparkEngine"


class PersonaSparkEngineConfig(FeastConfigBaseModel):
    """``batch_engine: {type: persona.serving.engine.PersonaSparkEngine, ...}``."""

    type: Literal["persona.serving.engine.PersonaSparkEngine"] = ENGINE_TYPE
    # Spark partitions writing to Redis at once (one connection each). 0 keeps the
    # partitions of Feast's latest-row query (a shuffle: AQE sizes them to the data and
    # the cores), which saves a second shuffle per view.
    write_partitions: int = 0
    # Commands in flight per connection.
    pipeline_rows: int = 500
    # Who encodes and writes: "executors" (mapInArrow, one connection per partition:
    # scales with the cluster), "driver" (Arrow batches collected per view, written from
    # the driver: no Python workers to start), "auto" (driver on a local master).
    write_from: Literal["auto", "driver", "executors"] = "auto"
    # Who reads the latest row per user when writing from the driver: "spark" (Feast's
    # pull_latest query), "delta" (delta-rs + pyarrow over the window's partitions, the
    # same selection, no Spark job: Spark's fixed cost per query dominated small and
    # medium materializations here), "auto" (delta for local Delta tables it can read).
    read_with: Literal["auto", "spark", "delta"] = "auto"


@dataclass
class _Job(MaterializationJob):
    _job_id: str
    _status: MaterializationJobStatus
    _error: Optional[BaseException] = None
    rows: int = 0
    seconds: float = 0.0
    view: str = ""

    def status(self) -> MaterializationJobStatus:
        return self._status

    def error(self) -> Optional[BaseException]:
        return self._error

    def should_be_retried(self) -> bool:
        return False

    def job_id(self) -> str:
        return self._job_id

    def url(self) -> Optional[str]:
        return None


# Per-view results of this process's materializations (persona.serving.materialize clears it per run).
LAST_RUN: list[_Job] = []


class PersonaSparkEngine(ComputeEngine):
    """Feast compute engine: offline query by Feast, encoding + Redis writes by persona."""

    def __init__(self, *, repo_config, offline_store, online_store, **kwargs):
        super().__init__(repo_config=repo_config, offline_store=offline_store, online_store=online_store)
        cfg = repo_config.batch_engine
        self.write_partitions = int(getattr(cfg, "write_partitions", kwargs.get("write_partitions", 0)))
        self.pipeline_rows = int(getattr(cfg, "pipeline_rows", kwargs.get("pipeline_rows", 500)))
        self.write_from = str(getattr(cfg, "write_from", kwargs.get("write_from", "auto")))
        self.read_with = str(getattr(cfg, "read_with", kwargs.get("read_with", "auto")))

    @property
    def supports_batch(self) -> bool:
        return True

    def update(self, project, views_to_delete, views_to_keep, entities_to_delete, entities_to_keep):
        pass

    def teardown_infra(self, project, fvs, entities):
        pass

    def materialize(self, registry, tasks, **kwargs) -> list:
        """All Redis-bound views in one Spark job (their write stages run side by side);
        anything else view by view through Feast. One result per task, in order."""
        if isinstance(tasks, MaterializationTask):
            tasks = [tasks]
        started = time.perf_counter()
        results: dict[int, tuple] = {}  # task index -> (rows, error)
        fast: list = []
        for i, task in enumerate(tasks):
            fv = task.feature_view
            try:
                job, join_keys = self._offline_job(registry, task)
                job.delta_latest = lambda task=task, join_keys=join_keys: self._delta_latest(registry, task, join_keys)
                target = self._fast_redis(fv, join_keys)
                if target is not None and isinstance(job, SparkRetrievalJob):
                    fast.append((i, job, self._layout(fv, join_keys), target))
                else:
                    results[i] = (self._through_feast(job, fv), None)
            except BaseException as exc:  # Feast re-raises the first error after rollback
                results[i] = (0, exc)
        if fast:
            try:
                counts = self._spark_to_redis(fast)
                for i, _, layout, _ in fast:
                    results[i] = (counts.get(layout.name, 0), None)
            except BaseException as exc:
                for i, *_ in fast:
                    results[i] = (0, exc)
        seconds = time.perf_counter() - started
        jobs = []
        for i, task in enumerate(tasks):
            rows, error = results[i]
            job = _Job(f"{task.feature_view.name}-{task.start_time}-{task.end_time}",
                       MaterializationJobStatus.ERROR if error else MaterializationJobStatus.SUCCEEDED,
                       error, rows=rows, seconds=seconds, view=task.feature_view.name)
            jobs.append(job)
            LAST_RUN.append(job)
        return jobs

    # -- one feature view ---------------------------------------------------------------
    def _offline_job(self, registry, task: MaterializationTask):
        fv = task.feature_view
        entities = [registry.get_entity(name, task.project) for name in fv.entities]
        join_keys, features, ts_field, created_field = _get_column_names(fv, entities)
        job = self.offline_store.pull_latest_from_table_or_query(
            config=self.repo_config,
            data_source=fv.batch_source,
            join_key_columns=join_keys,
            feature_name_columns=features,
            timestamp_field=ts_field,
            created_timestamp_column=created_field,
            start_date=task.start_time,
            end_date=task.end_time,
        )
        return job, join_keys

    def _delta_latest(self, registry, task: MaterializationTask, join_keys: list):
        """Feast's ``pull_latest_from_table_or_query`` selection, read with delta-rs:
        rows with ``start <= event_timestamp <= end`` (and the date partitions in that
        range), the latest per join key by (timestamp, created timestamp) descending.

        Returns an Arrow table with Spark's column types, or None when this source is
        not a local Delta table delta-rs can read as plain Parquet (then Spark runs
        Feast's query): ``read_with`` "delta" insists only as far as that."""
        fv = task.feature_view
        src = fv.batch_source
        path = getattr(src, "path", None)
        if (not isinstance(src, SparkSource) or not isinstance(getattr(src, "table_format", None), DeltaFormat)
                or not path or src.field_mapping or not is_local_path(path)):
            return None
        try:
            table = DeltaTable(path)
            if plain_parquet_blockers(table):
                return None  # data a plain Parquet scan would read wrongly
            dataset = table.to_pyarrow_dataset()
        except Exception:
            return None
        entities = [registry.get_entity(name, task.project) for name in fv.entities]
        keys, features, ts_field, created_field = _get_column_names(fv, entities)
        utc = dt.timezone.utc
        start, end = task.start_time, task.end_time
        ts_type = dataset.schema.field(ts_field).type
        expr = ((pc.field(ts_field) >= pa.scalar(start.astimezone(utc), ts_type))
                & (pc.field(ts_field) <= pa.scalar(end.astimezone(utc), ts_type)))
        part = src.date_partition_column
        if part and part in dataset.schema.names and src.date_partition_column_format == "%Y-%m-%d":
            # Feast compares the partition column with start/end formatted as dates.
            lo = dt.datetime.strptime(start.strftime("%Y-%m-%d"), "%Y-%m-%d").date()
            hi = dt.datetime.strptime(end.strftime("%Y-%m-%d"), "%Y-%m-%d").date()
            ptype = dataset.schema.field(part).type
            expr = expr & (pc.field(part) >= pa.scalar(lo, ptype)) & (pc.field(part) <= pa.scalar(hi, ptype))
        order = [ts_field] + ([created_field] if created_field else [])
        columns = list(dict.fromkeys(keys + features + order))
        data = dataset.to_table(columns=columns, filter=expr)
        if data.num_rows:
            idx = pc.sort_indices(data, sort_keys=[(k, "ascending") for k in keys]
                                  + [(c, "descending") for c in order])
            data = data.take(idx)
            if keys:
                first = pc.fill_null(pc.not_equal(data.column(keys[0]).slice(1), data.column(keys[0]).slice(0, data.num_rows - 1)), True)
                for k in keys[1:]:
                    first = pc.or_(first, pc.fill_null(pc.not_equal(data.column(k).slice(1), data.column(k).slice(0, data.num_rows - 1)), True))
                data = data.filter(pa.concat_arrays([pa.array([True]), first.combine_chunks() if isinstance(first, pa.ChunkedArray) else first]))
            else:
                data = data.slice(0, 1)
        return data.cast(_small_types(data.schema))

    def _layout(self, fv, join_keys: list) -> ViewLayout:
        name = compute_versioned_name(fv, self.repo_config.registry.enable_online_feature_view_versioning)
        return ViewLayout(
            name=name,
            join_key=join_keys[0],
            project=self.repo_config.project,
            timestamp_field=fv.batch_source.timestamp_field,
            features=tuple(
                (f.name, f.dtype.to_value_type().name, _mmh3(f"{name}:{f.name}")) for f in fv.features
            ),
            ts_field=f"_ts:{name}".encode(),
        )

    def _fast_redis(self, fv, join_keys) -> Optional[RedisTarget]:
        """The Redis target when the fast path applies, else None (Feast's own path)."""
        cfg = self.repo_config.online_store
        if not isinstance(cfg, RedisOnlineStoreConfig) or cfg.redis_type == RedisType.redis_sentinel:
            return None
        if len(join_keys) != 1 or cfg.key_ttl_seconds:
            return None
        if self.repo_config.entity_key_serialization_version != 3:
            return None
        key_field = next((c for c in fv.entity_columns if c.name == join_keys[0]), None)
        if key_field is not None and key_field.dtype.to_value_type().name != "STRING":
            return None
        return redis_target(cfg.connection_string, cluster=cfg.redis_type == RedisType.redis_cluster)

    def _spark_to_redis(self, fast: list) -> dict:
        """One Spark job: per view, Feast's latest-row query -> ``write_partitions``
        partitions -> executors encode and pipeline HSETs; returns rows per view."""
        spark = fast[0][1].spark_session
        mode = self.write_from
        if mode == "auto":
            mode = "driver" if spark.sparkContext.master.startswith("local") else "executors"
        if mode == "driver":
            return self._driver_to_redis(fast)
        frames = []
        for _, job, layout, target in fast:
            df = job.to_spark_df()
            if self.write_partitions > 0:
                df = df.repartition(self.write_partitions)
            writer = partial(write_batches, layout=layout, target=target, pipeline_rows=self.pipeline_rows)
            frames.append(df.mapInArrow(writer, "rows long").withColumn("view", F.lit(layout.name)))
        # Each Arrow batch yields one (rows, view) record: collecting them needs no shuffle.
        counted = reduce(lambda a, b: a.unionByName(b), frames)
        label = "+".join(layout.name for _, _, layout, _ in fast)
        group = f"persona-materialize-{time.time_ns()}"
        sc = spark.sparkContext
        sc.setJobGroup(group, f"materialize {label} into Redis")
        stop = threading.Event()
        poller = threading.Thread(target=_poll_progress, args=(sc, group, label, stop), daemon=True)
        poller.start()
        try:
            rows: dict = {}
            for r in counted.collect():
                rows[r["view"]] = rows.get(r["view"], 0) + int(r["rows"])
        finally:
            stop.set()
            poller.join(timeout=2)
            sc.setLocalProperty("spark.jobGroup.id", None)
            sc.setLocalProperty("spark.job.description", None)
        if PROGRESS is not None:
            PROGRESS(label, 1, 1)
        return rows

    def _driver_to_redis(self, fast: list) -> dict:
        """Local masters: each view's latest rows come to the driver as Arrow (no Python
        workers to start) and are encoded and pipelined from here, views in parallel
        threads (the Spark queries overlap; encoding and socket writes release the GIL)."""
        done = [0]
        lock = threading.Lock()

        def one(item) -> tuple[str, int]:
            _, job, layout, target = item
            table = job.delta_latest() if self.read_with != "spark" else None
            if table is None:
                table = job.to_spark_df().toArrow()
            batches = iter(table.to_batches(max_chunksize=10_000))
            n = sum(int(b.column(0)[0].as_py()) for b in write_batches(batches, layout, target, self.pipeline_rows))
            with lock:
                done[0] += 1
                if PROGRESS is not None:
                    PROGRESS("+".join(x[2].name for x in fast), done[0], len(fast))
            return layout.name, n

        with ThreadPoolExecutor(max_workers=len(fast)) as pool:
            return dict(pool.map(one, fast))

    def _through_feast(self, job, fv) -> int:
        """Feast's conversion and ``online_write_batch`` on the driver (SQLite & co)."""
        table = job.delta_latest() if self.read_with != "spark" else None
        if table is None:
            table = job.to_arrow()
        join_key_types = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}
        size = self.repo_config.materialization_config.online_write_batch_size or 10_000
        done = 0
        batches = table.to_batches(max_chunksize=size)
        for i, batch in enumerate(batches):
            rows = _convert_arrow_to_proto(batch, fv, join_key_types)
            self.online_store.online_write_batch(self.repo_config, fv, rows, progress=None)
            done += batch.num_rows
            if PROGRESS is not None:
                PROGRESS(fv.name, i + 1, len(batches))
        if PROGRESS is not None and not batches:
            PROGRESS(fv.name, 1, 1)
        return done


def _poll_progress(sc, group: str, view: str, stop: threading.Event) -> None:
    """Report finished/total tasks of the Spark jobs in ``group`` until ``stop``."""
    if PROGRESS is None:
        return
    tracker = sc.statusTracker()
    while not stop.wait(0.25):
        done = total = 0
        try:
            for job_id in tracker.getJobIdsForGroup(group):
                info = tracker.getJobInfo(job_id)
                if info is None:
                    continue
                for stage_id in info.stageIds:
                    stage = tracker.getStageInfo(stage_id)
                    if stage is not None:
                        done += stage.numCompletedTasks
                        total += stage.numTasks
        except Exception:  # the tracker is best-effort; never fail a write over it
            return
        if total:
            PROGRESS(view, done, total)


def _small_types(schema):
    """The schema with 32-bit-offset string/binary/list types (what Spark's toArrow gives)."""
    def small(t):
        if pa.types.is_large_string(t):
            return pa.string()
        if pa.types.is_large_binary(t):
            return pa.binary()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(pa.field(t.value_field.name, small(t.value_type), t.value_field.nullable))
        return t

    return pa.schema([pa.field(f.name, small(f.type), f.nullable) for f in schema])
