"""`maintain`: small files compacted with the content unchanged, snapshots older than the
policy deleted, VACUUM honouring the retention policy (time travel survives 168 h, ends
at 0 h).

Planted data: silver.user_behaviour over five as_of_dates, bronze.events over two
event_dates, and silver.user_daily (the daily partials) on event dates around the
oldest partial a kept snapshot still rolls up (cutoff - 29 days), each written by two small appends spread over four tasks (so every
partition gets several tiny files and the tables have two versions). Run 1: default
vacuum retention, snapshot retention 2 days. Run 2: vacuum retention 0 h.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from core.settings import load_settings

pytestmark = pytest.mark.integration

NEWEST = dt.date(2024, 3, 10)
DAYS = [NEWEST - dt.timedelta(days=k) for k in range(5)]  # 10, 9, 8, 7, 6 March
USERS = [f"u{i}" for i in range(6)]
KEEP_DAYS = 2  # keep as_of_date >= NEWEST - 2 days
# Partials: the kept as-of day NEWEST-2 reads event dates back to NEWEST-31.
PARTIAL_DAYS = [NEWEST, NEWEST - dt.timedelta(days=31), NEWEST - dt.timedelta(days=32),
                NEWEST - dt.timedelta(days=45)]


def _settings(home, **maint):
    env = {"PERSONA__SPARK__MASTER": "local[2]", "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4"}
    env.update({f"PERSONA__MAINTENANCE__{k.upper()}": str(v) for k, v in maint.items()})
    return load_settings(home=home, environ=env)


def content_hash(spark, path, version=None) -> tuple[int, str]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    rows = sorted(repr(tuple(r)) for r in reader.load(path).collect())
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def build(spark, settings):
    from tests.integration.test_forget import event_rows, snapshot_rows

    from spark_jobs.schemas import EVENTS, USER_BEHAVIOUR, USER_DAILY

    for part in range(2):
        users = USERS[part * 3:(part + 1) * 3]
        beh = [r for d in DAYS for r in snapshot_rows(USER_BEHAVIOUR, users, d, start=part * 100)]
        spark.createDataFrame(beh, USER_BEHAVIOUR).repartition(4).write.format("delta").mode("append") \
            .partitionBy("as_of_date").save(settings.table("silver.user_behaviour"))
        ev = [r for d in DAYS[:2] for r in event_rows(USERS, d, start=part * 100)]
        spark.createDataFrame(ev, EVENTS).repartition(4).write.format("delta").mode("append") \
            .partitionBy("event_date").save(settings.table("bronze.events"))
        daily = [r for d in PARTIAL_DAYS for r in snapshot_rows(USER_DAILY, users, d, start=part * 100)]
        spark.createDataFrame(daily, USER_DAILY).write.format("delta").mode("append") \
            .partitionBy("event_date").save(settings.table("silver.user_daily"))


@pytest.fixture(scope="module")
def maintained(spark, tmp_path_factory):
    from spark_jobs.ops.maintain import run_maintain

    home = tmp_path_factory.mktemp("maintain-home")
    first = _settings(home, snapshot_retention_days=KEEP_DAYS)
    build(spark, first)
    beh, ev = first.table("silver.user_behaviour"), first.table("bronze.events")
    before = {"beh": content_hash(spark, beh), "ev": content_hash(spark, ev)}
    cutoff = NEWEST - dt.timedelta(days=KEEP_DAYS)
    kept = spark.read.format("delta").load(beh).where(f"as_of_date >= DATE'{cutoff}'")
    rows = sorted(repr(tuple(r)) for r in kept.collect())
    expected_beh = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
    run1 = run_maintain(spark, first)
    after1 = {"beh": content_hash(spark, beh), "ev": content_hash(spark, ev)}
    # Within the default retention (168 h) the first version is still readable.
    v0_after_run1 = content_hash(spark, ev, version=0)
    second = _settings(home, vacuum_retention_hours=0, snapshot_retention_days=KEEP_DAYS)
    run2 = run_maintain(spark, second)
    return dict(before=before, expected_beh=expected_beh, run1=run1, after1=after1, run2=run2,
                v0_after_run1=v0_after_run1, settings=second, cutoff=cutoff,
                after2={"beh": content_hash(spark, beh), "ev": content_hash(spark, ev)})


def _row(summary, table):
    return next(t for t in summary["tables"] if t["table"] == table)


def test_small_files_are_compacted(maintained):
    for table in ("silver.user_behaviour", "bronze.events"):
        r = _row(maintained["run1"], table)
        assert r["files_compacted"] > 0 and r["files_after"] < r["files_before"], r
    # One file per partition after compaction: 3 kept days, 2 event dates.
    assert _row(maintained["run1"], "silver.user_behaviour")["files_after"] == KEEP_DAYS + 1
    assert _row(maintained["run1"], "bronze.events")["files_after"] == 2


def test_content_is_unchanged(maintained):
    assert maintained["after1"]["ev"] == maintained["before"]["ev"]
    assert maintained["after2"]["ev"] == maintained["before"]["ev"]
    assert maintained["after1"]["beh"] == maintained["expected_beh"]
    assert maintained["after2"]["beh"] == maintained["expected_beh"]


def test_old_snapshots_removed_per_policy(maintained, spark):
    r = _row(maintained["run1"], "silver.user_behaviour")
    assert r["snapshot_rows_deleted"] == (len(DAYS) - KEEP_DAYS - 1) * len(USERS)
    assert r["snapshots_before"] == maintained["cutoff"].isoformat()
    days = {x[0] for x in spark.read.format("delta").load(
        maintained["settings"].table("silver.user_behaviour")).select("as_of_date").distinct().collect()}
    assert days == {d for d in DAYS if d >= maintained["cutoff"]}
    # bronze has no snapshot retention; the second run finds nothing more to delete.
    assert _row(maintained["run1"], "bronze.events")["snapshot_rows_deleted"] == 0
    assert _row(maintained["run2"], "silver.user_behaviour")["snapshot_rows_deleted"] == 0


def test_partials_kept_as_far_back_as_kept_snapshots_read(maintained, spark):
    r = _row(maintained["run1"], "silver.user_daily")
    oldest_needed = maintained["cutoff"] - dt.timedelta(days=29)
    assert r["snapshots_before"] == oldest_needed.isoformat()
    assert r["snapshot_rows_deleted"] == 2 * len(USERS)  # NEWEST-32 and NEWEST-45
    days = {x[0] for x in spark.read.format("delta").load(
        maintained["settings"].table("silver.user_daily")).select("event_date").distinct().collect()}
    assert days == {d for d in PARTIAL_DAYS if d >= oldest_needed}
    assert _row(maintained["run2"], "silver.user_daily")["snapshot_rows_deleted"] == 0


def test_vacuum_follows_the_retention_policy(maintained, spark):
    # 168 h: nothing young enough to delete, time travel to version 0 still works.
    assert all(t["files_vacuumed"] == 0 for t in maintained["run1"]["tables"] if t["status"] == "ok")
    assert maintained["v0_after_run1"][0] == len(USERS) * 2  # the first append: every user on 2 days
    # 0 h: the compacted-away files go, and so does time travel to the versions using them.
    r2 = _row(maintained["run2"], "bronze.events")
    assert r2["files_vacuumed"] == _row(maintained["run1"], "bronze.events")["files_before"]
    assert any("overridden" in n for n in r2["notes"])
    with pytest.raises(Exception) as info:
        spark.read.format("delta").option("versionAsOf", 0).load(
            maintained["settings"].table("bronze.events")).collect()
    assert "not" in str(info.value).lower()  # file not found / does not exist


def test_absent_tables_are_reported_and_unknown_names_refused(maintained, spark):
    from core.errors import InputError
    from spark_jobs.ops.maintain import run_maintain

    assert _row(maintained["run1"], "gold.user_profiles")["status"] == "absent"
    with pytest.raises(InputError, match="unknown table"):
        run_maintain(spark, maintained["settings"], ["gold.nope"])


def test_session_conf_restored(maintained, spark):
    assert spark.conf.get("spark.databricks.delta.retentionDurationCheck.enabled") == "true"
    assert spark.conf.get("spark.sql.sources.parallelPartitionDiscovery.parallelism") == "10000"
