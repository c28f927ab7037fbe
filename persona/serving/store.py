"""The Feast feature store built from persona's settings, and ``persona apply``.

Input: the Delta tables ``silver.user_behaviour``, ``gold.user_embeddings`` and
``gold.user_profiles`` (one row per user per ``as_of_date``) and the declarations in
``feature_repo/``. Output: Feast's registry and online store tables under
``<home>/feast`` (SQLite + file registry by default; Redis + a SQL registry when
``settings.feast`` says so), one registered object per declaration. Also shared by the
other serving modules: the cached ``FeatureStore`` per home, the feature service
lookup, and the translation of outages into one-line persona errors.

What callers do with the store lives beside it: ``materialize`` (offline -> online),
``lookup`` (online features, point-in-time training sets) and ``http`` (the feature
server).

The configuration is built in code (``repo_config``) from the same settings the Spark
jobs use, and also written to ``<home>/feast/feature_store.yaml`` so the plain ``feast``
CLI can be pointed at it (``feast -c feature_repo -f <home>/feast/feature_store.yaml``).
Feast's Spark offline store reuses the active Spark session (callers pass theirs or
``get_spark(settings)`` builds one), so there is one JVM per process.

Feast is imported inside the functions that need it: ``persona forget`` reads
``config_dict`` from here and must not pay Feast's import (seconds) when it only
touches the tables.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import redis
import yaml
from sqlalchemy.exc import OperationalError

from core.errors import InputError, NotBuiltError, PersonaError, ServiceError
from persona.serving.redis_codec import client_for, redis_target
from spark_jobs.delta_io import is_delta
from spark_jobs.jars import JarsMissing
from spark_jobs.session import get_spark, spark_conf

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig
    from pyspark.sql import SparkSession

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
# The fast batch engine (persona/serving/engine.py): Feast drives it like any engine.
ENGINE = "persona.serving.engine.PersonaSparkEngine"


def _quiet_feast() -> None:
    """Feast warns "alpha" on every Spark call; persona pins the versions it tested.
    Feast's spark module installs its own filter on import, so ours goes after it."""
    # deferred: Feast
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
    from feast import RepoConfig  # deferred: Feast

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
    from feast import FeatureStore  # deferred: Feast

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
    from feast.errors import FeatureServiceNotFoundException  # deferred: Feast

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
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return ServiceError(
            f"Redis online store at {settings.feast.redis_connection} is unreachable "
            f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})"
        )
    text = str(exc)
    if "redis.exceptions.ConnectionError" in text or "redis.exceptions.TimeoutError" in text:
        # Raised on a Spark executor (the Redis write path) and re-raised by Spark.
        return ServiceError(f"Redis online store at {settings.feast.redis_connection} became "
                            "unreachable while materializing (rerun `persona materialize`)")
    if isinstance(exc, OperationalError):
        return ServiceError(f"Feast SQL registry is unreachable: {str(exc.orig).splitlines()[0]}")
    return None


@contextlib.contextmanager
def user_errors(settings: "Settings") -> Iterator[None]:
    """Turn service outages and missing registries into one-line persona errors."""
    # deferred: Feast
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
    target = redis_target(settings.feast.redis_connection, connect_timeout=2.0)
    with user_errors(settings):
        client = client_for(target)
        try:
            client.ping()
        finally:
            client.close()


@contextlib.contextmanager
def feast_spark(spark: "SparkSession") -> Iterator["SparkSession"]:
    """Feast's Spark store flips ``spark.sql.parser.quotedRegexColumnNames`` on the
    shared session; put it back afterwards so other jobs parse backticks as usual."""
    key = "spark.sql.parser.quotedRegexColumnNames"
    before = spark.conf.get(key, "false")
    try:
        yield spark
    finally:
        spark.conf.set(key, before)


def session_for(settings: "Settings", spark: "SparkSession | None") -> "SparkSession":
    """``spark`` when the caller has one, else the session for ``settings``."""
    if spark is not None:
        return spark
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
    # deferred: Feast
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
    from feast import Entity, FeatureService, FeatureView  # deferred: Feast

    session = session_for(settings, spark)
    require_tables(settings, session)
    check_online_store(settings)
    objects = load_declarations(settings)
    store = get_store(settings, fresh=True)
    with user_errors(settings), feast_spark(session):
        stale = _stale_objects(store, objects)
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


def _stale_objects(store: "FeatureStore", objects: list) -> list:
    """What the registry holds but the declarations no longer do (``feast apply`` deletes it)."""
    from feast.data_source import DataSource  # deferred: Feast

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
    return stale


def require_tables(settings: "Settings", spark: "SparkSession") -> None:
    """NotBuiltError unless every Delta table a feature view reads exists."""
    missing = [t for t in VIEW_TABLES.values() if not is_delta(spark, settings.table(t))]
    if missing:
        raise NotBuiltError(
            f"Delta table(s) {', '.join(missing)} not built yet under {settings.warehouse_root} "
            "(run the behaviour, embed and fuse jobs first)"
        )
