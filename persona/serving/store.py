"""Feast client helpers: the feature store built from persona's settings, and the five
things callers do with it (apply, materialize, online lookup, training set, serve).

Input: the Delta tables ``silver.user_behaviour``, ``gold.user_embeddings`` and
``gold.user_profiles`` (one row per user per ``as_of_date``) and the declarations in
``feature_repo/``. Output: Feast's registry and online store under ``<home>/feast``
(SQLite + file registry by default; Redis + a SQL registry when ``settings.feast`` says
so), online feature dicts (one per user), and point-in-time training sets (one row per
entity row).

The configuration is built in code (``repo_config``) from the same settings the Spark
jobs use, and also written to ``<home>/feast/feature_store.yaml`` so the plain ``feast``
CLI can be pointed at it (``feast -c feature_repo -f <home>/feast/feature_store.yaml``).
Feast's Spark offline store reuses the active Spark session (callers pass theirs or
``get_spark(settings)`` builds one), so there is one JVM per process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import runpy
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import yaml

from core.dates import utc
from core.delta_log import latest_event_timestamp
from core.errors import InputError, NotBuiltError, PersonaError, ServiceError

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig
    from pyspark.sql import DataFrame, SparkSession

    from core.settings import Settings

REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
DECLARATIONS = REPO_DIR / "persona_repo.py"
ENTITY = "user_id"
DEFAULT_SERVICE = "recommender_v1"
# Feature view -> Delta table it reads (the declarations say the same in literal paths).
VIEW_TABLES = {
    "user_behaviour": "silver.user_behaviour",
    "user_embedding": "gold.user_embeddings",
    "user_profile": "gold.user_profiles",
}
# The fast batch engine (persona/feast_engine.py): Feast drives it like any engine.
ENGINE = "persona.serving.engine.PersonaSparkEngine"


def _quiet_feast() -> None:
    """Feast warns "alpha" on every Spark call; persona pins the versions it tested.
    Feast's spark module installs its own filter on import, so ours goes after it."""
    import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401

    warnings.filterwarnings("ignore", message=r"The spark (offline store|data source API) is an experimental",
                            category=RuntimeWarning)


# ---- configuration ------------------------------------------------------------------
def feast_dir(settings: "Settings") -> Path:
    return settings.feast_dir


def _registry_config(settings: "Settings") -> dict:
    f = settings.feast
    if f.registry_url:
        # A shared SQL registry (PostgreSQL, MySQL, SQLite via SQLAlchemy URL).
        # cache_mode thread: a serving process refreshes its copy in the background, so no
        # request waits on the database when the cache expires (Feast's latency advice).
        return {"registry_type": "sql", "path": f.registry_url, "cache_mode": "thread",
                "cache_ttl_seconds": f.registry_cache_ttl_s, "sqlalchemy_config_kwargs": {"pool_pre_ping": True}}
    return {"registry_type": "file", "path": str(feast_dir(settings) / "registry.db"),
            "cache_ttl_seconds": f.registry_cache_ttl_s}


def _online_config(settings: "Settings") -> dict:
    f = settings.feast
    if f.online_store == "redis":
        # skip_dedup: materialization writes the latest row per user once, in event-time
        # order per key, so Feast's read-before-write timestamp check is pure overhead.
        kind = "persona.serving.redis_store.PersonaRedisOnlineStore" if f.fast_reads else "redis"
        return {"type": kind, "connection_string": f.redis_connection, "skip_dedup": True}
    return {"type": "sqlite", "path": str(feast_dir(settings) / "online_store.db")}


def config_dict(settings: "Settings", engine: str | None = None) -> dict:
    """The Feast configuration for ``settings``, as the dict a feature_store.yaml holds."""
    from spark_jobs.jars import JarsMissing
    from spark_jobs.session import spark_conf

    f = settings.feast
    if engine is None:
        engine = f.batch_engine
    try:
        offline_conf = spark_conf(settings)
    except JarsMissing:
        # Online reads and the HTTP server need no Spark; jobs that do fail clearly later.
        offline_conf = {}
    if engine == "persona":
        batch_engine: dict = {"type": ENGINE, "write_partitions": f.write_partitions,
                              "pipeline_rows": f.pipeline_rows, "write_from": f.write_from,
                              "read_with": f.materialize_read}
    elif engine == "spark":
        batch_engine = {"type": "spark.engine", "partitions": f.write_partitions}
    else:
        batch_engine = {"type": "local"}
    return {
        "project": f.project,
        "provider": "local",
        "registry": _registry_config(settings),
        "online_store": _online_config(settings),
        "offline_store": {"type": "spark", "spark_conf": offline_conf},
        "batch_engine": batch_engine,
        "materialization": {"online_write_batch_size": 10_000},
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: "Settings", engine: str | None = None) -> "RepoConfig":
    from feast import RepoConfig

    data = config_dict(settings, engine)
    return RepoConfig(repo_path=REPO_DIR, **data)


def render_yaml(settings: "Settings") -> Path:
    """Write the effective configuration to ``<home>/feast/feature_store.yaml``."""
    d = feast_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "feature_store.yaml"
    header = ("# Written by `persona apply` from persona's settings; use with\n"
              f"#   feast -c {REPO_DIR} -f {path} <command>\n")
    path.write_text(header + yaml.safe_dump(config_dict(settings), sort_keys=False))
    return path


_STORES: dict[tuple, "FeatureStore"] = {}
_STORES_LOCK = threading.Lock()


def get_store(settings: "Settings", engine: str | None = None, fresh: bool = False) -> "FeatureStore":
    """The FeatureStore for ``settings`` (cached per process: the registry cache and the
    online store's connection pool are what make repeated lookups fast)."""
    from feast import FeatureStore

    key = (str(settings.home.resolve()), settings.feast.model_dump_json(), engine)
    _quiet_feast()
    with _STORES_LOCK:
        if fresh or key not in _STORES:
            feast_dir(settings).mkdir(parents=True, exist_ok=True)
            _STORES[key] = FeatureStore(repo_path=str(REPO_DIR), config=repo_config(settings, engine))
        return _STORES[key]


def require_registry(settings: "Settings") -> None:
    """NotBuiltError unless ``persona apply`` has written a (file) registry."""
    if not settings.feast.registry_url and not (feast_dir(settings) / "registry.db").is_file():
        raise NotBuiltError(f"no Feast registry under {feast_dir(settings)} (run `persona apply` first)")


def feature_service(settings: "Settings", name: str):
    """The registered feature service ``name``; a one-line error naming the known ones."""
    from feast.errors import FeatureServiceNotFoundException

    require_registry(settings)
    store = get_store(settings)
    try:
        return store.get_feature_service(name, allow_cache=True)
    except FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        if not known:
            raise NotBuiltError("no feature services registered (run `persona apply` first)") from None
        raise InputError(f"unknown feature service {name!r} (registered: {', '.join(known)})") from None


# ---- errors -------------------------------------------------------------------------
def _service_error(settings: "Settings", exc: BaseException) -> PersonaError | None:
    """A one-line ServiceError for an unreachable online store or registry, else None."""
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        redis = None
    if redis is not None and isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return ServiceError(
            f"Redis online store at {settings.feast.redis_connection} is unreachable "
            f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})"
        )
    text = str(exc)
    if "redis.exceptions.ConnectionError" in text or "redis.exceptions.TimeoutError" in text:
        # Raised on a Spark executor (the Redis write path) and re-raised by Spark.
        return ServiceError(f"Redis online store at {settings.feast.redis_connection} became "
                            "unreachable while materializing (rerun `persona materialize`)")
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover
        OperationalError = ()  # type: ignore[assignment]
    if OperationalError and isinstance(exc, OperationalError):
        return ServiceError(f"Feast SQL registry is unreachable: {str(exc.orig).splitlines()[0]}")
    return None


@contextlib.contextmanager
def _user_errors(settings: "Settings") -> Iterator[None]:
    """Turn service outages and missing registries into one-line persona errors."""
    from feast.errors import FeatureServiceNotFoundException, FeatureViewNotFoundException

    try:
        yield
    except PersonaError:
        raise
    except (FeatureServiceNotFoundException, FeatureViewNotFoundException) as exc:
        raise NotBuiltError(f"{str(exc).splitlines()[0]} (run `persona apply` first)") from exc
    except Exception as exc:
        err = _service_error(settings, exc)
        if err is not None:
            raise err from exc
        raise


def check_online_store(settings: "Settings") -> None:
    """Fail fast (one line) when the configured Redis does not answer a PING."""
    if settings.feast.online_store != "redis":
        return
    from persona.serving.redis_codec import client_for, redis_target

    target = redis_target(settings.feast.redis_connection, connect_timeout=2.0)
    with _user_errors(settings):
        client = client_for(target)
        try:
            client.ping()
        finally:
            client.close()


@contextlib.contextmanager
def _feast_spark(spark: "SparkSession") -> Iterator["SparkSession"]:
    """Feast's Spark store flips ``spark.sql.parser.quotedRegexColumnNames`` on the
    shared session; put it back afterwards so other jobs parse backticks as usual."""
    key = "spark.sql.parser.quotedRegexColumnNames"
    before = spark.conf.get(key, "false")
    try:
        yield spark
    finally:
        spark.conf.set(key, before)


def _spark(settings: "Settings", spark: "SparkSession | None") -> "SparkSession":
    if spark is not None:
        return spark
    from spark_jobs.session import get_spark

    return get_spark(settings)


# ---- declarations -------------------------------------------------------------------
@contextlib.contextmanager
def _repo_env(settings: "Settings") -> Iterator[None]:
    """The environment the declarations read their table paths and ttl from."""
    wanted = {
        "PERSONA_HOME": str(settings.home.resolve()),
        "PERSONA__WAREHOUSE": settings.warehouse_root,
        "PERSONA__FEAST__TTL_DAYS": str(settings.feast.ttl_days),
    }
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_declarations(settings: "Settings") -> list:
    """Every Feast object declared in ``feature_repo/``, with this home's table paths.

    Executed fresh each time (not imported), so two homes in one process never share a
    cached module with the other's paths.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    _quiet_feast()
    with _repo_env(settings):
        namespace = runpy.run_path(str(DECLARATIONS), run_name="persona_feature_repo")
    objects: list = []
    for value in namespace.values():
        if isinstance(value, (Entity, DataSource, FeatureView, FeatureService)) and not any(
            value is o for o in objects
        ):
            objects.append(value)
    return objects


def apply(settings: "Settings", spark: "SparkSession | None" = None) -> dict:
    """Register the declarations (``feast apply``) and create the online tables.

    Returns ``{"views": [...], "services": [...], "registry": ..., "online_store": ...}``.
    Missing Delta tables are a NotBuiltError naming the table (Feast validates sources).
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    session = _spark(settings, spark)
    _require_tables(settings, session)
    check_online_store(settings)
    objects = load_declarations(settings)
    store = get_store(settings, fresh=True)
    with _user_errors(settings), _feast_spark(session):
        # Delete what the registry holds but the declarations no longer do (feast apply).
        declared = {(type(o).__name__, o.name) for o in objects}
        stale: list = []
        registry = store.registry
        for kind, lister in (
            ("FeatureService", registry.list_feature_services),
            ("FeatureView", registry.list_feature_views),
            ("Entity", registry.list_entities),
            ("DataSource", registry.list_data_sources),
        ):
            try:
                existing = lister(store.project)
            except Exception:  # a fresh registry has no project yet
                existing = []
            for o in existing:
                if kind == "DataSource":
                    if not any(isinstance(x, DataSource) and x.name == o.name for x in objects):
                        stale.append(o)
                elif (type(o).__name__, o.name) not in declared and o.name != "__dummy":
                    stale.append(o)
        store.apply(objects, objects_to_delete=stale, partial=False)
    yaml_path = render_yaml(settings)
    # Later calls in this process (materialize, get) see the new registry at once.
    _STORES.clear()
    return {
        "views": sorted(o.name for o in objects if isinstance(o, FeatureView)),
        "services": sorted(o.name for o in objects if isinstance(o, FeatureService)),
        "entities": sorted(o.name for o in objects if isinstance(o, Entity)),
        "deleted": sorted(o.name for o in stale),
        "registry": store.config.registry.path,
        "online_store": settings.feast.online_store,
        "feature_store_yaml": str(yaml_path),
    }


def _require_tables(settings: "Settings", spark: "SparkSession") -> None:
    from spark_jobs.delta_io import is_delta

    missing = [t for t in VIEW_TABLES.values() if not is_delta(spark, settings.table(t))]
    if missing:
        raise NotBuiltError(
            f"Delta table(s) {', '.join(missing)} not built yet under {settings.warehouse_root} "
            "(run the behaviour, embed and fuse jobs first)"
        )


# ---- materialization ----------------------------------------------------------------
def latest_snapshot(settings: "Settings", spark: "SparkSession") -> dt.datetime | None:
    """The newest ``event_timestamp`` over the serving tables (None when all are empty).

    Read from the Delta log's file statistics (delta-rs, milliseconds, no Spark job);
    rounded up to the end of that millisecond. Falls back to a Spark aggregate.
    """
    latest = None
    for table in VIEW_TABLES.values():
        ts = latest_event_timestamp(settings.table(table))
        if ts is None:
            from pyspark.sql import functions as F

            row = spark.read.format("delta").load(settings.table(table)).agg(F.max("event_timestamp")).first()
            ts = utc(row[0]) if row and row[0] is not None else None
        if ts is not None:
            latest = ts if latest is None else max(latest, ts)
    return latest


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[None]:
    """A rich bar per write job, fed by the engine (Spark tasks or write batches)."""
    from persona.serving import engine as feast_engine

    if not show:
        yield
        return
    from persona.progress import bar

    with bar() as progress:
        tasks: dict[str, Any] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(f"materialize {label}", total=max(total, 1))
            progress.update(tasks[label], completed=done, total=max(total, 1))

        feast_engine.PROGRESS = update
        try:
            yield
        finally:
            feast_engine.PROGRESS = None


def materialize(
    settings: "Settings",
    start: dt.datetime | dt.date | None = None,
    end: dt.datetime | dt.date | None = None,
    spark: "SparkSession | None" = None,
    views: Sequence[str] | None = None,
    show_progress: bool = True,
) -> dict:
    """Load the latest row per user into the online store.

    Incremental by default (``start`` None): each view continues from where its last
    materialization ended; a view never materialized starts ``ttl`` before the newest
    snapshot (not before *now*: demo and backfilled data may be older than the ttl).
    ``end`` defaults to the later of now and the newest snapshot's ``event_timestamp``
    (today's snapshot is stamped at the end of today). With ``start``: exactly that window.
    Returns rows written per view, seconds and rows/s.
    """
    import sys

    from persona.serving import engine as feast_engine

    require_registry(settings)
    session = _spark(settings, spark)
    _require_tables(settings, session)
    check_online_store(settings)
    store = get_store(settings)
    latest = latest_snapshot(settings, session)
    now = dt.datetime.now(dt.timezone.utc)
    end_ts = utc(end) if end is not None else max(now, latest or now)
    start_ts = utc(start) if start is not None else None
    if start_ts is not None and start_ts > end_ts:
        raise InputError(f"--start {start_ts.isoformat()} is after --end {end_ts.isoformat()}")
    ttl = dt.timedelta(days=settings.feast.ttl_days)
    feast_engine.LAST_RUN.clear()
    t0 = time.perf_counter()
    with _user_errors(settings), _feast_spark(session), _progress(show_progress), \
            contextlib.redirect_stdout(sys.stderr):  # Feast prints; keep stdout for results
        fvs = [fv for fv in store.list_feature_views() if views is None or fv.name in views]
        if views is not None and len(fvs) != len(set(views)):
            unknown = sorted(set(views) - {fv.name for fv in fvs})
            raise InputError(f"unknown feature view(s): {', '.join(unknown)}")
        if not fvs:
            raise NotBuiltError("no feature views registered (run `persona apply` first)")
        if start_ts is not None:
            mode = "window"
            store.materialize(start_ts, end_ts, feature_views=[fv.name for fv in fvs])
        else:
            mode = "incremental"
            fresh = [fv.name for fv in fvs if fv.most_recent_end_time is None]
            seen = [fv.name for fv in fvs if fv.most_recent_end_time is not None]
            if fresh:
                anchor = min(end_ts, latest or end_ts)
                store.materialize(anchor - ttl, end_ts, feature_views=fresh)
            if seen:
                store.materialize_incremental(end_ts, feature_views=seen)
    seconds = time.perf_counter() - t0
    # Rows per view: known with persona's engine; Feast's own engines do not report them.
    rows: dict[str, int] = {}
    for job in feast_engine.LAST_RUN:
        rows[job.view] = rows.get(job.view, 0) + job.rows
    total = sum(rows.values()) if rows else None
    return {
        "mode": mode,
        "start": start_ts.isoformat() if start_ts else None,
        "end": end_ts.isoformat(),
        "views": dict(rows),
        "rows": total,  # user x view rows written
        "users": max(rows.values()) if rows else None,
        "seconds": round(seconds, 3),
        "rows_per_s": round(total / seconds, 1) if total and seconds > 0 else None,
        "online_store": settings.feast.online_store,
        "engine": settings.feast.batch_engine,
    }


# ---- online -------------------------------------------------------------------------
def get_online(settings: "Settings", users: Sequence[str], service: str = DEFAULT_SERVICE) -> list[dict]:
    """Online features of ``service`` for each user: one flat dict per user, in order.

    An unknown (or not yet materialized) user gets ``None`` for every feature; see
    :func:`missing`. No Spark involved: this is Feast's SDK against the online store.
    """
    if not users:
        return []
    store = get_store(settings)
    with _user_errors(settings):
        fs = feature_service(settings, service)
        columns = store.get_online_features(
            features=fs, entity_rows=[{ENTITY: str(u)} for u in users]
        ).to_dict()
    names = [k for k in columns if k != ENTITY]
    return [{ENTITY: str(u), **{k: columns[k][i] for k in names}} for i, u in enumerate(users)]


def missing(row: dict) -> bool:
    """True when the online store had nothing for this user (every feature is null)."""
    return all(v is None for k, v in row.items() if k != ENTITY)


# ---- offline ------------------------------------------------------------------------
def read_entities(spark: "SparkSession", path: str | os.PathLike) -> "DataFrame":
    """An entity file (csv with header, parquet, json lines) -> (user_id, event_timestamp, ...)."""
    from pyspark.sql import functions as F

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
) -> "DataFrame":
    """Point-in-time correct features for each entity row (Feast's Spark offline store).

    ``entities``: a Spark or pandas frame with ``user_id`` and ``event_timestamp``. Each
    row gets, per view, the latest snapshot with ``event_timestamp`` at or before its own
    and no older than the ttl (else nulls). Returns a lazy Spark DataFrame; call inside
    no context (the SQL is parsed here, with Feast's parser setting, then restored).
    """
    session = _spark(settings, spark)
    store = get_store(settings)
    if not isinstance(entities, _spark_df_type()):
        entities = session.createDataFrame(entities)
    with _user_errors(settings), _feast_spark(session):
        fs = feature_service(settings, service)
        job = store.get_historical_features(entity_df=entities, features=fs, full_feature_names=False)
        return job.to_spark_df()


def _spark_df_type():
    from pyspark.sql import DataFrame

    return DataFrame


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
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    session = _spark(settings, spark)
    t0 = time.perf_counter()
    if isinstance(entities, (str, os.PathLike)):
        entities = read_entities(session, entities)
    df = historical(settings, entities, service, session)
    out_path = str(out)
    with _feast_spark(session):
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


# ---- HTTP ---------------------------------------------------------------------------
def serve(settings: "Settings", port: int | None = None, host: str | None = None) -> None:
    """An HTTP feature server (``POST /get-online-features``, Feast's JSON) on loopback;
    blocks. ``settings.feast.server``: "persona" (persona/feast_server.py, lean) or
    "feast" (Feast's own FastAPI server)."""
    require_registry(settings)
    check_online_store(settings)
    store = get_store(settings)
    with _user_errors(settings):
        if not store.list_feature_services():  # fail now, not on the first request
            raise NotBuiltError("no feature services registered (run `persona apply` first)")
        if settings.feast.server == "persona":
            from persona.serving.http import make_server

            try:
                server = make_server(store, host or settings.feast.server_host, port or settings.feast.server_port)
            except OSError as exc:
                raise ServiceError(f"cannot listen on {host or settings.feast.server_host}:"
                                   f"{port or settings.feast.server_port}: {exc.strerror or exc}") from None
            try:
                server.serve_forever(poll_interval=0.5)
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
            return
        store.serve(
            host=host or settings.feast.server_host,
            port=port or settings.feast.server_port,
            type_="http",
            no_access_log=True,
            workers=1,
            registry_ttl_sec=settings.feast.registry_cache_ttl_s,
        )
