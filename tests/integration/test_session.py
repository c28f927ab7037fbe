"""The session factory: Delta on, UTC, Arrow, cached jars, venv workers, reuse."""

from __future__ import annotations

import sys

import pytest

from core.settings import load_settings
from spark_jobs.jars import JarsMissing, cached_jars
from spark_jobs.session import get_spark, spark_conf

pytestmark = pytest.mark.integration


def test_session_settings(spark):
    conf = spark.conf
    assert conf.get("spark.sql.session.timeZone") == "UTC"
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert "DeltaSparkSessionExtension" in conf.get("spark.sql.extensions")
    jars = spark.sparkContext.getConf().get("spark.jars")
    assert "delta-spark_4.1_2.13" in jars and "://" not in jars.replace("file://", "")
    assert spark.sparkContext.getConf().get("spark.jars.packages", "") == ""  # nothing resolved at run time


def test_factory_reuses_the_active_session(spark, tmp_path):
    assert get_spark(load_settings(home=tmp_path, environ={})) is spark


def test_python_workers_run_the_drivers_interpreter(spark):
    def where(_):
        import sys as s

        yield s.executable

    got = spark.sparkContext.parallelize([1], 1).mapPartitions(where).collect()
    assert got == [sys.executable]


def test_delta_round_trip_and_time_travel(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)
    spark.range(5).write.format("delta").mode("overwrite").save(path)
    assert spark.read.format("delta").load(path).count() == 5
    assert spark.read.format("delta").option("versionAsOf", 0).load(path).count() == 3


def test_cluster_master_from_config_and_missing_jars_error(tmp_path):
    s = load_settings(home=tmp_path, environ={"PERSONA__SPARK__MASTER": "spark://10.0.0.1:7077"})
    conf = spark_conf(s)
    assert conf["spark.master"] == "spark://10.0.0.1:7077"
    assert "spark.driver.bindAddress" not in conf  # only local sessions pin loopback
    assert len(cached_jars()) >= 2
    with pytest.raises(JarsMissing, match="make install"):
        cached_jars(tmp_path / "empty")
