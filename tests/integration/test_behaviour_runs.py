"""Refresh semantics of the behaviour job on a small generated log written straight to
bronze: idempotent builds and backfills, no leakage from later days, resumable
backfills, late data recomputing exactly the affected as-of days, partition pruning.

The steps share one warehouse and run in order (each test builds on the previous one).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pyspark.sql import functions as F

from core import delta_log
from spark_jobs.silver import behaviour, partials, rollup
from spark_jobs.schemas import EVENTS

pytestmark = pytest.mark.integration

START = dt.date(2024, 1, 1)
D = dt.date(2024, 2, 5)
T0 = pd.Timestamp("2024-03-01", tz="UTC")


def _write(spark, settings, events: pd.DataFrame, ingested_at: pd.Timestamp) -> None:
    from spark_jobs.schemas import conform

    pdf = events.copy()
    pdf["event_ts"] = pd.to_datetime(pdf["event_ts"], utc=True)
    pdf["event_date"] = pdf["event_ts"].dt.date
    pdf["source"] = "test"
    pdf["ingested_at"] = ingested_at
    pdf["quantity"] = pdf["quantity"].astype("Int32")
    df = spark.createDataFrame(pdf[[f.name for f in EVENTS.fields]], EVENTS)
    conform(df, EVENTS).write.format("delta").mode("append").partitionBy("event_date").save(
        settings.table("bronze.events")
    )


def _extra(base: pd.DataFrame, day: dt.date, tag: str, users: list[str]) -> pd.DataFrame:
    """A few new events on ``day`` for ``users`` (copies of real rows, new ids/times)."""
    rows = base.groupby("user_id").head(3)
    rows = rows[rows["user_id"].isin(users)].copy()
    rows["event_id"] = [f"{tag}-{i}" for i in range(len(rows))]
    rows["event_ts"] = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(range(len(rows)), unit="h")
    rows["event_type"] = "purchase"
    return rows


def _digest(spark, settings, table: str, lo: dt.date, hi: dt.date) -> dict[dt.date, tuple[int, int]]:
    """Order-independent content hash per as_of_date (rows, sum of row hashes)."""
    df = spark.read.format("delta").load(settings.table(table)).where(
        (F.col("as_of_date") >= F.lit(lo)) & (F.col("as_of_date") <= F.lit(hi))
    )
    row_hash = F.xxhash64(*[F.col(c) for c in df.columns])
    out = df.groupBy("as_of_date").agg(F.count(F.lit(1)).alias("n"), F.sum(row_hash.cast("decimal(38,0)")).alias("h"))
    return {r["as_of_date"]: (r["n"], int(r["h"])) for r in out.collect()}


@pytest.fixture(scope="module")
def log(spark, module_settings):
    from persona.demo.generator import generate

    events = generate(users=40, days=40, seed=3, start=START).events
    _write(spark, module_settings, events, T0)
    return {"events": events, "state": {}}


def test_missing_bronze_is_a_clear_error(spark, settings):
    from core.errors import NotBuiltError

    with pytest.raises(NotBuiltError, match="bronze.events"):
        behaviour.run_build(spark, settings, D)


def test_latest_complete_day(spark, module_settings, log):
    last = dt.date(2024, 2, 9)
    assert behaviour.latest_complete_day(spark, module_settings, today=dt.date(2030, 1, 1)) == last
    # the current UTC day is still filling up: never the default
    assert behaviour.latest_complete_day(spark, module_settings, today=last) == last - dt.timedelta(days=1)


def test_build_reads_only_its_window_partitions(spark, module_settings, log):
    bronze = spark.read.format("delta").load(module_settings.table("bronze.events"))
    params = partials.BehaviourParams.from_settings(module_settings)
    # The plan's text cuts each scan's metadata at spark.sql.maxMetadataStringLength (100)
    # characters: long expression ids (late in a test run) would cut the dates off.
    previous = spark.conf.get("spark.sql.maxMetadataStringLength")
    spark.conf.set("spark.sql.maxMetadataStringLength", "1000")
    try:
        plan = rollup.behaviour_features(bronze, D, D, params)._jdf.queryExecution().executedPlan().toString()
    finally:
        spark.conf.set("spark.sql.maxMetadataStringLength", previous)
    scans = [line for line in plan.splitlines() if "FileScan" in line or "PartitionFilters" in line]
    assert scans, plan
    lo = (D - dt.timedelta(days=29)).isoformat()
    for line in scans:
        assert "PartitionFilters: [" in line and f"(event_date#" in line
        assert lo in line and D.isoformat() in line, line
    # and the scan of a pruned read touches exactly 30 of the 40 day partitions
    pruned = bronze.where((F.col("event_date") >= F.lit(dt.date.fromisoformat(lo))) & (F.col("event_date") <= F.lit(D)))
    assert pruned.select("event_date").distinct().count() == 30
    assert len({f.split("event_date=")[1][:10] for f in pruned.inputFiles()}) == 30
    # a daily refresh computes only its own day's partial from bronze: one partition
    plan = partials.daily_partials(bronze, D, D, params)._jdf.queryExecution().executedPlan().toString()
    scans = [line for line in plan.splitlines() if "PartitionFilters" in line]
    assert scans and all(line.count(D.isoformat()) >= 2 and lo not in line for line in scans), plan


def test_build_twice_then_backfill_gives_identical_rows(spark, module_settings, log):
    s = behaviour.run_build(spark, module_settings, D)
    assert s["as_of"] == D.isoformat() and s["behaviour_rows"] > 0
    assert s["partial_days_recomputed"] == 30  # no partial stored yet: the whole window
    assert s["read_event_dates"] == [(D - dt.timedelta(days=29)).isoformat(), D.isoformat()]
    first = _digest(spark, module_settings, "silver.user_behaviour", D, D)
    first_seq = _digest(spark, module_settings, "silver.user_sequences", D, D)
    again = behaviour.run_build(spark, module_settings, D)
    assert again["partial_days_recomputed"] == 1  # only day D itself: the 29 before are current
    assert _digest(spark, module_settings, "silver.user_behaviour", D, D) == first
    calls = []
    b = behaviour.run_backfill(spark, module_settings, D - dt.timedelta(days=2), D, force=True,
                               progress=lambda done, total: calls.append((done, total)))
    assert b["days_built"] == 3 and b["passes"] == [[(D - dt.timedelta(days=2)).isoformat(), D.isoformat()]]
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert _digest(spark, module_settings, "silver.user_behaviour", D, D) == first
    assert _digest(spark, module_settings, "silver.user_sequences", D, D) == first_seq
    log["state"]["D"] = first


def test_backfill_is_resumable(spark, module_settings, log):
    a, b = dt.date(2024, 2, 1), dt.date(2024, 2, 7)
    s = behaviour.run_backfill(spark, module_settings, a, b)
    assert s["days_built"] == 4 and s["days_skipped"] == 3  # 02-03..02-05 were built above
    again = behaviour.run_backfill(spark, module_settings, a, b)
    assert again["days_built"] == 0 and again["passes"] == []
    log["state"]["before_late"] = _digest(spark, module_settings, "silver.user_behaviour", a, b)


def test_events_after_the_as_of_day_never_change_its_row(spark, module_settings, log):
    users = sorted(log["events"]["user_id"].unique())[:10]
    extra = _extra(log["events"], D + dt.timedelta(days=1), "future", users)
    # also a brand-new user who only appears after D
    newcomer = extra.head(2).copy()
    newcomer["user_id"] = "u-newcomer"
    newcomer["event_id"] = ["future-new-0", "future-new-1"]
    _write(spark, module_settings, pd.concat([extra, newcomer]), T0 + pd.Timedelta(days=1))
    behaviour.run_build(spark, module_settings, D)
    assert _digest(spark, module_settings, "silver.user_behaviour", D, D) == log["state"]["D"]
    assert behaviour.days_to_build(spark, module_settings, D - dt.timedelta(days=4), D) == []


def test_late_data_recomputes_exactly_the_affected_days(spark, module_settings, log):
    late_day = dt.date(2024, 2, 3)
    users = sorted(log["events"]["user_id"].unique())[10:20]
    _write(spark, module_settings, _extra(log["events"], late_day, "late", users), T0 + pd.Timedelta(days=2))
    a, b = dt.date(2024, 2, 1), dt.date(2024, 2, 9)
    s = behaviour.run_backfill(spark, module_settings, a, b)
    # 02-03..02-07 are stale (late data in their windows; 02-06/07 also saw the D+1
    # events), 02-08/09 were never built; 02-01/02 are untouched.
    assert s["passes"] == [["2024-02-03", "2024-02-09"]]
    # partials: those of the days that received rows since (_extra spreads its rows an
    # hour apart, so the late 02-03 rows spill into 02-04 and the D+1 rows into 02-07)
    # were stale, 02-08/09 missing; the 30 before were reused
    assert s["partial_days_recomputed"] == 6
    after = _digest(spark, module_settings, "silver.user_behaviour", a, b)
    before = log["state"]["before_late"]
    for d in (dt.date(2024, 2, 1), dt.date(2024, 2, 2)):
        assert after[d] == before[d]
    for d in (dt.date(2024, 2, 3), dt.date(2024, 2, 4), dt.date(2024, 2, 5)):
        assert after[d] != before[d]
    # the rebuilt rows are what a from-scratch computation over today's bronze gives
    bronze = spark.read.format("delta").load(module_settings.table("bronze.events"))
    fresh = rollup.behaviour_features(bronze, a, b, partials.BehaviourParams.from_settings(module_settings))
    row_hash = F.xxhash64(*[F.col(c) for c in fresh.columns])
    table = spark.read.format("delta").load(module_settings.table("silver.user_behaviour")).where(
        (F.col("as_of_date") >= F.lit(a)) & (F.col("as_of_date") <= F.lit(b)))
    table_hash = F.xxhash64(*[F.col(c) for c in table.columns])
    want = fresh.agg(F.count(F.lit(1)), F.sum(row_hash.cast("decimal(38,0)"))).first()
    got = table.agg(F.count(F.lit(1)), F.sum(table_hash.cast("decimal(38,0)"))).first()
    assert tuple(got) == tuple(want)
    # and the stored daily partials are what a from-scratch computation gives
    lo = a - dt.timedelta(days=29)
    fresh_p = partials.daily_partials(bronze, lo, b, partials.BehaviourParams.from_settings(module_settings))
    stored_p = spark.read.format("delta").load(module_settings.table("silver.user_daily")).where(
        F.col("event_date").between(lo, b))
    cols = stored_p.columns

    def content(df):
        h = F.xxhash64(*[F.col(c) for c in cols])
        return tuple(df.select(*cols).agg(F.count(F.lit(1)), F.sum(h.cast("decimal(38,0)"))).first())

    assert content(stored_p) == content(fresh_p)
    # the late purchases show up in the affected users' rows
    row = table.where((F.col("as_of_date") == F.lit(late_day)) & (F.col("user_id") == users[0])).first()
    assert row["days_since_last_purchase"] == 0


def test_daily_refresh_staleness_from_delta_statistics(spark, module_settings, log, monkeypatch):
    """A build's staleness check reads both tables' Delta statistics (no scan); with
    sub-millisecond ingest times (statistics keep milliseconds) it still recomputes
    exactly the day that got late data, and the result equals a from-scratch run."""
    bronze_path = module_settings.table("bronze.events")
    daily_path = module_settings.table("silver.user_daily")
    lo, hi = D - dt.timedelta(days=29), D
    stats = delta_log.stats_day_max(bronze_path, "ingested_at", lo, hi)
    scanned = behaviour.day_ingested(spark.read.format("delta").load(bronze_path), lo, hi)
    assert stats is not None and set(stats) == set(scanned)
    assert all(abs(stats[d] - scanned[d].replace(tzinfo=stats[d].tzinfo)) < dt.timedelta(milliseconds=1)
               for d in stats)
    assert delta_log.stats_day_max(daily_path, "created_timestamp", lo, hi) is not None
    assert delta_log.stats_day_max("s3a://bucket/none", "ingested_at", lo, hi) is None  # remote: scan
    assert delta_log.stats_day_max(str(module_settings.home / "nothing"), "ingested_at", lo, hi) is None

    assert behaviour.run_build(spark, module_settings, D)["partial_days_recomputed"] == 1
    late_day = D - dt.timedelta(days=3)
    users = sorted(log["events"]["user_id"].unique())[20:22]  # 6 rows an hour apart: one day
    _write(spark, module_settings, _extra(log["events"], late_day, "late2", users),
           T0 + pd.Timedelta(days=3, microseconds=123_457))
    s = behaviour.run_build(spark, module_settings, D)
    assert s["partial_days_recomputed"] == 2  # D itself and the day with late data
    def no_scan(*args, **kwargs):
        raise AssertionError("the daily refresh scanned for staleness")

    monkeypatch.setattr(behaviour, "day_ingested", no_scan)
    assert behaviour.run_build(spark, module_settings, D)["partial_days_recomputed"] == 1
    monkeypatch.undo()
    bronze = spark.read.format("delta").load(bronze_path)
    fresh = rollup.behaviour_features(bronze, D, D, partials.BehaviourParams.from_settings(module_settings))
    table = spark.read.format("delta").load(module_settings.table("silver.user_behaviour")).where(
        F.col("as_of_date") == F.lit(D))

    def content(df):
        h = F.xxhash64(*[F.col(c) for c in fresh.columns])
        return tuple(df.select(*fresh.columns).agg(F.count(F.lit(1)), F.sum(h.cast("decimal(38,0)"))).first())

    assert content(table) == content(fresh)


def test_backfill_rejects_an_inverted_range(spark, module_settings, log):
    from core.errors import InputError

    with pytest.raises(InputError, match="before"):
        behaviour.run_backfill(spark, module_settings, D, D - dt.timedelta(days=1))
