"""Concurrency: a backfill of older days runs while today's refresh runs; both finish and
nothing is lost.

Two threads on the one session (Spark runs their jobs concurrently; Delta's optimistic
concurrency control checks each commit against the ones that landed since the writer
read the table, exactly as between two processes). The backfill writes as-of days
[first, last-1] in passes of two days, the refresh writes day ``last``: disjoint
``replaceWhere`` ranges of the same two silver tables. Run twice: onto tables that do
not exist yet (both writers race to create them) and onto existing tables (forced
rewrite). Afterwards both tables hold exactly the rows of the serial run.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from pathlib import Path

import pytest

from tests.support.pipeline import baseline, baseline_dir, make_settings, table_hash

pytestmark = pytest.mark.integration

SILVER = ("silver.user_sequences", "silver.user_behaviour")


@pytest.fixture(scope="module")
def first(spark, tmp_path_factory):
    return baseline(spark, baseline_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def home(first, tmp_path_factory) -> Path:
    """Bronze of the baseline run, silver not built yet."""
    dst = tmp_path_factory.mktemp("concurrency") / "home"
    shutil.copytree(Path(first["home"]) / "warehouse" / "bronze", dst / "warehouse" / "bronze")
    return dst


def _race(spark, settings, first, force: bool) -> dict:
    from spark_jobs.silver import behaviour

    start, end = dt.date.fromisoformat(first["first_day"]), dt.date.fromisoformat(first["last_day"])
    results: dict = {}
    errors: dict = {}
    gate = threading.Barrier(2)

    def backfill():
        try:
            gate.wait()
            results["backfill"] = behaviour.run_backfill(spark, settings, start, end - dt.timedelta(days=1),
                                                         force=force)
        except BaseException as exc:  # reported below, with the other thread's outcome
            errors["backfill"] = exc

    def refresh():
        try:
            gate.wait()
            results["refresh"] = behaviour.run_build(spark, settings, end)
        except BaseException as exc:
            errors["refresh"] = exc

    threads = [threading.Thread(target=backfill), threading.Thread(target=refresh)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    assert not errors, {k: f"{type(v).__name__}: {str(v).splitlines()[0] if str(v) else ''}" for k, v in errors.items()}
    return results


def _hashes(home: Path) -> dict:
    return {t: table_hash(home / "warehouse" / t.split(".")[0] / t.split(".")[1]) for t in SILVER}


def test_backfill_and_refresh_create_the_tables_together(spark, home, first):
    settings = make_settings(home, behaviour__backfill_chunk_days=2)
    r = _race(spark, settings, first, force=False)
    assert r["backfill"]["days_built"] == 9 and len(r["backfill"]["passes"]) == 5
    assert r["refresh"]["as_of"] == first["last_day"]
    assert _hashes(home) == {t: first["hashes"][t] for t in SILVER}


def test_backfill_and_refresh_rewrite_existing_days_together(spark, home, first):
    settings = make_settings(home, behaviour__backfill_chunk_days=2)
    r = _race(spark, settings, first, force=True)
    assert r["backfill"]["days_built"] == 9
    assert _hashes(home) == {t: first["hashes"][t] for t in SILVER}


def test_writers_racing_to_create_a_table_all_land(spark, tmp_path, caplog):
    """Four writers of disjoint days start at once on a table that does not exist: Delta
    lets one create it and fails the others' commits; ``replace_where`` retries those,
    so every day lands exactly once."""
    import logging

    from pyspark.sql import functions as F
    from pyspark.sql.types import DateType, LongType, StructField, StructType

    from spark_jobs import delta_io

    schema = StructType([StructField("as_of_date", DateType()), StructField("n", LongType())])
    path = str(tmp_path / "raced")
    days = [dt.date(2024, 1, d) for d in range(1, 5)]
    gate = threading.Barrier(len(days))
    errors: list[BaseException] = []

    def write(day: dt.date) -> None:
        try:
            df = spark.range(10).select(F.lit(day).alias("as_of_date"), F.col("id").alias("n"))
            gate.wait()
            delta_io.replace_where(df, path, schema, "as_of_date", day, day)
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="spark_jobs.delta_io"):
        threads = [threading.Thread(target=write, args=(d,)) for d in days]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    assert not errors, [f"{type(e).__name__}: {str(e)[:200]}" for e in errors]
    rows = spark.read.format("delta").load(path).groupBy("as_of_date").count().collect()
    assert {r["as_of_date"]: r["count"] for r in rows} == {d: 10 for d in days}
    retried = [r for r in caplog.records if "retrying the write" in r.getMessage()]
    print(f"{len(retried)} conflicting commits retried")
