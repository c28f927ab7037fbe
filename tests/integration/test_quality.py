"""The data-quality gate over a real bronze.events Delta table: counts per day, flags,
and a configured gate stopping the build before anything is written."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from core.settings import load_settings

pytestmark = pytest.mark.integration

START = dt.date(2024, 5, 1)
BAD_VOLUME = dt.date(2024, 5, 9)   # 4x the usual volume
BAD_NULLS = dt.date(2024, 5, 10)   # half the views lost their item_id
LAST = dt.date(2024, 5, 11)        # a normal day


def _rows():
    rng = random.Random(7)
    now = dt.datetime(2024, 6, 1)
    rows = []
    day = START
    while day <= LAST:
        n = 400 if day == BAD_VOLUME else 100
        for i in range(n):
            kind = rng.choice(["view"] * 6 + ["cart", "purchase", "search"])
            item = None if (day == BAD_NULLS and kind == "view" and i % 2 == 0) else f"i{rng.randrange(50)}"
            if kind == "search":
                item = None
            ts = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=rng.randrange(86400))
            rows.append((f"{day}-{i}", f"u{rng.randrange(30)}", item, None if item is None else "c1", kind, ts, day,
                         9.5 if kind == "purchase" else None, 1, None, "shoes" if kind == "search" else None,
                         None, "test", now))
        day += dt.timedelta(days=1)
    return rows


@pytest.fixture(scope="module")
def home(spark, tmp_path_factory):
    from spark_jobs.schemas import EVENTS

    settings = load_settings(home=tmp_path_factory.mktemp("dq"))
    rows = _rows()
    spark.createDataFrame(rows, EVENTS).write.format("delta").partitionBy("event_date").save(
        settings.table("bronze.events"))
    return settings, rows


def test_counts_per_day_match_the_rows(spark, home):
    from spark_jobs.silver.quality import check

    settings, rows = home
    report = check(spark, settings, [BAD_NULLS])
    (day,) = report.days
    views_and_more = [r for r in rows if r[6] == BAD_NULLS and r[4] != "search"]
    missing = sum(1 for r in views_and_more if r[2] is None)
    assert day.events == sum(1 for r in rows if r[6] == BAD_NULLS)
    assert day.null_rates["item_id"] == pytest.approx(missing / len(views_and_more), rel=1e-12)
    week = [r for r in rows if BAD_NULLS - dt.timedelta(days=7) <= r[6] < BAD_NULLS]
    assert day.baseline_events == pytest.approx(len(week) / 7, rel=1e-3)


def test_flags_exactly_the_bad_days(spark, home):
    from spark_jobs.silver.quality import check

    settings, _ = home
    report = check(spark, settings, [START + dt.timedelta(days=i) for i in range(11)])
    flagged = {d.event_date: d.flags for d in report.flagged}
    assert set(flagged) == {BAD_VOLUME, BAD_NULLS}, flagged
    assert "volume" in flagged[BAD_VOLUME][0]
    assert any(f.startswith("item_id missing") for f in flagged[BAD_NULLS])
    assert not report.days[0].checked  # the first day has no trailing week


def test_gate_reports_or_stops(spark, home, tmp_path):
    from spark_jobs.silver.quality import DataQualityError, gate

    settings, _ = home
    summary = gate(spark, settings, [BAD_VOLUME, LAST])
    assert summary["quality_days_flagged"] == 1 and summary["quality_flags"][0].startswith(str(BAD_VOLUME))
    strict = settings.model_copy(update={"behaviour": settings.behaviour.model_copy(update={"fail_on_quality": True})})
    with pytest.raises(DataQualityError, match=f"data-quality gate failed for {BAD_VOLUME}: volume"):
        gate(spark, strict, [BAD_VOLUME, LAST])
    assert gate(spark, strict, [LAST])["quality_days_flagged"] == 0


def test_a_failing_gate_stops_build_and_backfill_before_any_write(spark, home):
    from spark_jobs import delta_io
    from spark_jobs.silver.behaviour import run_backfill, run_build
    from spark_jobs.silver.quality import DataQualityError

    settings, _ = home
    strict = settings.model_copy(update={"behaviour": settings.behaviour.model_copy(update={"fail_on_quality": True})})
    with pytest.raises(DataQualityError, match=str(BAD_VOLUME)):
        run_build(spark, strict, BAD_VOLUME)
    with pytest.raises(DataQualityError, match=str(BAD_VOLUME)):
        run_backfill(spark, strict, LAST - dt.timedelta(days=3), LAST)
    for table in ("silver.user_behaviour", "silver.user_sequences", "silver.user_daily"):
        assert not delta_io.is_delta(spark, settings.table(table)), f"{table} was written"
    # Not configured to fail: the build runs and its summary names the flagged day.
    summary = run_build(spark, settings, BAD_VOLUME)
    assert summary["quality_days_flagged"] == 1 and summary["quality_flags"][0].startswith(str(BAD_VOLUME))
    assert delta_io.is_delta(spark, settings.table("silver.user_behaviour"))
