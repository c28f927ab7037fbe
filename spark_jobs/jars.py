"""The Delta Lake jars: resolved from Maven Central once, at install time, into a cache
the project owns. Spark sessions then load the cached files through ``spark.jars`` and
never touch the network (``python -m spark_jobs.jars`` is what ``make install`` runs).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# delta-spark 4.4.0 is built for Spark 4.1 / Scala 2.13 (the pyspark pin).
DELTA_PACKAGES = ("io.delta:delta-spark_4.1_2.13:4.4.0",)
_MARKER = "delta-spark_4.1_2.13-4.4.0.jar"


class JarsMissing(RuntimeError):
    pass


def default_jars_dir() -> Path:
    env = os.environ.get("PERSONA_JARS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "jars"
    return Path.home() / ".cache" / "persona" / "jars"


def cached_jars(jars_dir: str | os.PathLike | None = None) -> list[Path]:
    """The cached jar files, or a clear error telling how to fetch them."""
    d = Path(jars_dir) if jars_dir else default_jars_dir()
    jars = sorted(d.glob("*.jar")) if d.is_dir() else []
    if not any(j.name == _MARKER for j in jars):
        raise JarsMissing(
            f"Delta Lake jars not found in {d}; run `make install` "
            f"(or `python -m spark_jobs.jars`) once with network access"
        )
    return jars


def _artifact(jar_name: str) -> str:
    """``jackson-core-2.13.5.jar`` -> ``jackson-core``."""
    return re.sub(r"-\d[^-]*(-[A-Za-z0-9.]+)?\.jar$", "", jar_name)


def _spark_artifacts() -> set[str]:
    # Located, not imported: the CLI imports this module at start-up, and importing
    # pyspark costs about half a second.
    pyspark_dir = Path(importlib.util.find_spec("pyspark").origin).parent
    return {_artifact(j.name) for j in pyspark_dir.joinpath("jars").glob("*.jar")}


def resolve(jars_dir: str | os.PathLike | None = None, quiet: bool = False) -> list[Path]:
    """Download the Delta jars and their dependencies into ``jars_dir`` (idempotent)."""
    d = Path(jars_dir) if jars_dir else default_jars_dir()
    try:
        return cached_jars(d)
    except JarsMissing:
        pass
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="persona-ivy-") as ivy:
        # A throwaway JVM whose only job is Ivy resolution; isolated in a subprocess so
        # the calling process can still start its own session with different settings.
        code = (
            "from pyspark.sql import SparkSession\n"
            "s = SparkSession.builder.master('local[1]')"
            f".config('spark.jars.packages', {','.join(DELTA_PACKAGES)!r})"
            f".config('spark.jars.ivy', {ivy!r}).getOrCreate()\n"
            "s.stop()\n"
        )
        out = None if not quiet else subprocess.DEVNULL
        proc = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=out)
        if proc.returncode != 0:
            raise JarsMissing(f"could not resolve {DELTA_PACKAGES} from Maven Central")
        shipped = _spark_artifacts()
        for jar in Path(ivy, "jars").glob("*.jar"):
            # Ivy names files group_artifact-version.jar. Drop what pyspark already ships
            # (Hadoop, Jackson, Parquet, log4j...): two versions on one classpath is how
            # NoSuchMethodError happens at run time.
            name = jar.name.split("_", 1)[1] if "_" in jar.name else jar.name
            if _artifact(name) in shipped:
                continue
            shutil.copy2(jar, d / name)
    return cached_jars(d)


if __name__ == "__main__":
    for j in resolve():
        print(j)
