"""The one SparkSession factory: Delta-enabled, UTC, Arrow on, cached jars, venv workers.

``get_spark(settings)`` returns the active session when there is one (tests, notebooks,
``spark-submit``), else builds one from ``settings.spark``. Jobs take the session as an
argument; only entry points call this.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings, load_settings
from spark_jobs.jars import cached_jars

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _is_local(master: str) -> bool:
    return master.startswith("local")


def spark_conf(settings: Settings) -> dict[str, str]:
    """Every Spark setting persona applies, as a plain dict (also what Feast's offline
    store and the SQL server's spark-submit line are configured with)."""
    s = settings.spark
    jars = cached_jars(s.jars_dir or None)
    conf = {
        "spark.master": s.master,
        "spark.app.name": s.app_name,
        "spark.jars": ",".join(str(j) for j in jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(s.arrow_batch_size),
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.driver.memory": s.driver_memory,
        "spark.executor.memory": s.executor_memory,
        "spark.ui.enabled": str(s.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        # Python workers on the driver's interpreter, so UDFs see the same venv.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        # Reuse Python workers between tasks: a model cached at module level is then
        # loaded once per worker, not once per task.
        "spark.python.worker.reuse": "true",
        # Small local tables: Delta's default of 50 snapshot partitions is pure overhead.
        "spark.databricks.delta.snapshotPartitions": "4",
        "spark.databricks.delta.retentionDurationCheck.enabled": "true",
        "spark.sql.warehouse.dir": str(settings.home.resolve() / "spark-warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={settings.home.resolve() / 'derby'}",
    }
    if _is_local(s.master):
        # A laptop-sized driver: no separate executors, bind to loopback only.
        conf["spark.driver.bindAddress"] = "127.0.0.1"
        conf["spark.driver.host"] = "127.0.0.1"
    conf.update({k: str(v) for k, v in s.conf.items()})
    return conf


def get_spark(settings: Settings | None = None) -> "SparkSession":
    """The active session, or a new one configured from ``settings``."""
    # deferred: spark_conf() also serves processes that start no session here (Feast's
    # configuration, the SQL server's spark-submit line); pyspark takes ~0.5 s to import.
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if settings is None:
        settings = load_settings()
    conf = spark_conf(settings)
    # Executors launched later (standalone / yarn / k8s) read these from the environment.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if _is_local(settings.spark.master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark.log_level)
    if _is_local(settings.spark.master):
        _quiet_task_failures(spark, settings.spark.log_level)
    elif not conf.get("spark.submit.pyFiles"):
        ship_code(spark)
    return spark


# In local mode the executor runs inside the driver: a failed task (a full disk, a bad
# file) is logged with its stack trace by each of these, then raised to the caller,
# which reports it (one line in the CLI, the whole trace with --verbose). Keep only the
# raised copy, unless the log level asks for detail.
_TASK_FAILURE_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.util.Utils",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.sql.delta.files.DeltaFileFormatWriter",
)


def _quiet_task_failures(spark: "SparkSession", log_level: str) -> None:
    if log_level.upper() not in ("WARN", "ERROR", "FATAL", "OFF"):
        return
    try:
        jvm = spark.sparkContext._jvm
        configurator = jvm.org.apache.logging.log4j.core.config.Configurator
        off = jvm.org.apache.logging.log4j.Level.OFF
        for name in _TASK_FAILURE_LOGGERS:
            configurator.setLevel(name, off)
    except Exception:  # logging is cosmetic; never fail a session over it
        pass


# The packages executors import (UDFs, mapInPandas/mapInArrow functions, Feast encoders).
SHIPPED_PACKAGES = ("core", "encoders", "spark_jobs", "persona")


def code_archive(directory: str | None = None) -> str:
    """A zip of the project's Python packages, named by a hash of its content (so a
    changed file never reuses a stale archive); built once per content."""
    files: list[tuple[Path, str]] = []
    for name in SHIPPED_PACKAGES:
        # Located, not imported: the jobs must not load the application to ship it.
        root = Path(importlib.util.find_spec(name).submodule_search_locations[0]).resolve()
        files += [(f, str(f.relative_to(root.parent))) for f in sorted(root.rglob("*.py"))]
    digest = hashlib.sha256()
    for f, arc in files:
        digest.update(arc.encode() + b"\0" + f.read_bytes() + b"\0")
    out = Path(directory or tempfile.gettempdir()) / f"persona-code-{digest.hexdigest()[:16]}.zip"
    if not out.is_file():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f, arc in files:
                zf.write(f, arc)
        os.replace(tmp, out)
    return str(out)


def ship_code(spark: "SparkSession") -> str:
    """Send the project's code to the executors (``addPyFile``), as ``spark-submit
    --py-files`` would: on a cluster the executors' Python has only the dependencies
    (pyspark, pandas, TensorFlow...), not this project."""
    path = code_archive()
    before = list(sys.path)
    spark.sparkContext.addPyFile(path)
    # addPyFile also puts the archive first on the driver's sys.path; the driver keeps
    # importing from its installed tree (the packages find feature_repo/, sql/ beside it).
    sys.path[:] = before
    return path
