"""The behaviour jobs: ``bronze.events`` -> ``silver.user_behaviour`` and
``silver.user_sequences``, through the daily partials of ``silver.user_daily``.

Input: bronze events (schema ``EVENTS``), partitioned by ``event_date``.
Output grain: one row per user per ``as_of_date`` D for every user with at least one
event in the longest window (30 days: ``event_date`` in [D-29, D]); partitioned by
``as_of_date``. Definitions of every column: ``spark_jobs.silver.feature_dictionary``.

Two stages, so a daily refresh never re-reads 30 days of raw events: the daily partials
(``spark_jobs.silver.partials``: the events of a day aggregated once, kept in
``silver.user_daily``) and the roll-up of as-of days from the partials of their windows
(``spark_jobs.silver.rollup``). Both are pure; this module holds the jobs: it decides
which partials and as-of days are missing or stale, computes them and writes them.

A backfill pass computes the missing or stale partials of its windows (one pass over
the events of each contiguous run of such days), then rolls up all its as-of days in
one plan. A daily refresh computes one day's partial (reads one bronze partition) and
rolls up 30 small daily partials with hash aggregates only (``rollup.rollup_one_day``
writes exactly what a backfill writes).
"""

from __future__ import annotations

import datetime as dt
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.delta_log import stats_day_max
from core.errors import InputError, NotBuiltError
from core.tables import LONGEST_WINDOW
from spark_jobs import delta_io
from spark_jobs.schemas import USER_BEHAVIOUR, USER_DAILY, USER_SEQUENCES
from spark_jobs.silver.partials import KIND_DAY, BehaviourParams, daily_partials
from spark_jobs.silver.quality import gate as quality_gate
from spark_jobs.silver.rollup import features_from_partials
from spark_jobs.silver.sequences import user_sequences
from spark_jobs.silver.windows import window_read_range

BRONZE = "bronze.events"
BEHAVIOUR = "silver.user_behaviour"
SEQUENCES = "silver.user_sequences"
DAILY = "silver.user_daily"


def _bronze(spark: SparkSession, settings) -> DataFrame:
    return delta_io.read(spark, settings.table(BRONZE), "bronze.events: run `persona ingest` first")


def latest_complete_day(spark: SparkSession, settings, today: dt.date | None = None) -> dt.date:
    """The latest ``event_date`` in bronze whose UTC day is over (never today or later).

    A historical log (generated, Taobao 2017) ends on a complete day; a live feed's
    current day is still filling up, so the default build stops at yesterday.
    """
    today = today or dt.datetime.now(dt.timezone.utc).date()
    yesterday = today - dt.timedelta(days=1)
    row = (
        _bronze(spark, settings)
        .where(F.col("event_date") <= F.lit(yesterday))
        .agg(F.max("event_date").alias("d"))
        .collect()[0]
    )
    if row["d"] is None:
        raise NotBuiltError("bronze.events holds no complete day yet (nothing before today, UTC)")
    return row["d"]


def _days(lo: dt.date, hi: dt.date) -> list[dt.date]:
    return [lo + dt.timedelta(days=i) for i in range((hi - lo).days + 1)]


def day_ingested(events: DataFrame, lo: dt.date, hi: dt.date) -> dict[dt.date, object]:
    """event_date -> latest ``ingested_at`` of the events of [lo, hi] (reads two columns)."""
    return {
        r["event_date"]: r["m"]
        for r in events.where((F.col("event_date") >= F.lit(lo)) & (F.col("event_date") <= F.lit(hi)))
        .groupBy("event_date").agg(F.max("ingested_at").alias("m")).collect()
    }


def partial_ingested(spark: SparkSession, daily_path: str, lo: dt.date, hi: dt.date) -> dict[dt.date, object]:
    """event_date -> the ``ingested_at`` the stored partial of that day was computed from."""
    if not delta_io.is_delta(spark, daily_path):
        return {}
    return day_ingested(
        spark.read.format("delta").load(daily_path).where(F.col("kind") == KIND_DAY)
        .withColumnRenamed("created_timestamp", "ingested_at"), lo, hi)


def _window_max_ingested(per_day: dict, start: dt.date, end: dt.date) -> dict[dt.date, object]:
    """For each as-of day in [start, end]: the latest ``ingested_at`` among the events
    its windows read (None when its window holds no event)."""
    out: dict[dt.date, object] = {}
    for d in _days(start, end):
        vals = [per_day[x] for x in (d - dt.timedelta(days=k) for k in range(LONGEST_WINDOW)) if x in per_day]
        out[d] = max(vals) if vals else None
    return out


def refresh_partials(
    spark: SparkSession,
    events: DataFrame,
    daily_path: str,
    lo: dt.date,
    hi: dt.date,
    params: BehaviourParams,
    expected: dict | None = None,
    always: frozenset | set = frozenset(),
    events_path: str | None = None,
) -> list[dt.date]:
    """(Re)compute the stored daily partials of [lo, hi] that are missing or stale.

    A partial is current when it was computed from the same latest ``ingested_at`` as
    its bronze partition holds now (late data moves it); days in ``always`` are
    recomputed anyway. Each contiguous run of such days is ONE pass over their events,
    written with replaceWhere on ``event_date`` (idempotent; a day that lost all its
    events gets an empty partial). Returns the days recomputed.

    Without ``expected`` (a daily refresh), both sides come from the two tables' Delta
    statistics when they can answer exactly (``events_path`` given, local tables):
    two log reads instead of two Spark scans, which is most of a refresh's fixed cost.
    """
    have = None
    if expected is None:
        expected = stats_day_max(events_path, "ingested_at", lo, hi)
        if expected is not None:
            have = (stats_day_max(daily_path, "created_timestamp", lo, hi)
                    if delta_io.is_delta(spark, daily_path) else {})
            if have is None:
                expected = None  # compare like with like: both scanned
        if expected is None:
            expected = day_ingested(events, lo, hi)
    if have is None:
        have = partial_ingested(spark, daily_path, lo, hi)
    stale = [d for d in _days(lo, hi) if d in always or expected.get(d) != have.get(d)]
    for a, b in _runs(stale, 10**9):
        delta_io.replace_where(daily_partials(events, a, b, params), daily_path, USER_DAILY, "event_date", a, b)
    return stale


def refresh_range(
    spark: SparkSession,
    events: DataFrame,
    daily_path: str,
    out_path: str,
    start: dt.date,
    end: dt.date,
    params: BehaviourParams,
    expected: dict | None = None,
    always: frozenset | set = frozenset(),
    events_path: str | None = None,
) -> dict:
    """Bring the partials of [start-29, end] up to date, then roll up and write the
    as-of days [start, end] of ``out_path`` (replaceWhere on ``as_of_date``).
    ``events_path``: where ``events`` is stored (lets the staleness check read Delta
    statistics instead of scanning; see ``refresh_partials``)."""
    lo, hi = window_read_range(start, end)
    recomputed = refresh_partials(spark, events, daily_path, lo, hi, params, expected, always, events_path)
    partials = spark.read.format("delta").load(daily_path)
    feats = features_from_partials(partials, start, end, params)
    delta_io.replace_where(feats, out_path, USER_BEHAVIOUR, "as_of_date", start, end)
    return {"partial_days_recomputed": len(recomputed)}


def _built_days(spark: SparkSession, settings, start: dt.date, end: dt.date) -> dict[dt.date, object]:
    """as_of_date -> max(created_timestamp) of the behaviour rows already written."""
    path = settings.table(BEHAVIOUR)
    if not delta_io.is_delta(spark, path):
        return {}
    rows = (
        spark.read.format("delta").load(path)
        .where((F.col("as_of_date") >= F.lit(start)) & (F.col("as_of_date") <= F.lit(end)))
        .groupBy("as_of_date")
        .agg(F.max("created_timestamp").alias("m"))
        .collect()
    )
    return {r["as_of_date"]: r["m"] for r in rows}


def days_to_build(
    spark: SparkSession, settings, start: dt.date, end: dt.date, force: bool = False, per_day: dict | None = None
) -> list[dt.date]:
    """The as-of days of [start, end] a backfill must (re)compute.

    A day is current when its rows exist and their newest ``created_timestamp`` equals
    the newest ``ingested_at`` of the events in its window: late data ingested for any
    day of the window makes it stale again, so re-running a backfill recomputes exactly
    the as-of days the late data affects. A day whose window holds no event and that
    has no rows needs nothing. ``per_day``: ``day_ingested`` of [start-29, end].
    """
    all_days = _days(start, end)
    if force:
        return all_days
    if per_day is None:
        per_day = day_ingested(_bronze(spark, settings), *window_read_range(start, end))
    expected = _window_max_ingested(per_day, start, end)
    built = _built_days(spark, settings, start, end)
    todo = []
    for d in all_days:
        if expected[d] is None and d not in built:
            continue
        if built.get(d) != expected[d]:
            todo.append(d)
    return todo


def _runs(days: list[dt.date], chunk: int) -> list[tuple[dt.date, dt.date]]:
    """Contiguous runs of days, each cut into passes of at most ``chunk`` days."""
    out: list[tuple[dt.date, dt.date]] = []
    for d in sorted(days):
        if out and (d - out[-1][1]).days == 1 and (d - out[-1][0]).days < chunk:
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def build_range(
    spark: SparkSession,
    settings,
    start: dt.date,
    end: dt.date,
    per_day: dict | None = None,
    always: frozenset | set = frozenset(),
) -> dict:
    """Compute and write as-of days [start, end] of both silver tables in one pass each
    (and the daily partials of [start-29, end] that are missing, stale or in ``always``).

    Sequences are written first: the behaviour rows double as the "day is built" marker
    that resumable backfills check, so a pass interrupted in between is redone. No
    data-quality gate here: ``run_build`` and ``run_backfill`` run it before calling
    this, so a day the gate stops is never written.
    """
    events = _bronze(spark, settings)
    params = BehaviourParams.from_settings(settings)
    seq = user_sequences(events, start, end, settings.behaviour.sequence_length)
    delta_io.replace_where(seq, settings.table(SEQUENCES), USER_SEQUENCES, "as_of_date", start, end)
    seq_rows = delta_io.commit_rows(spark, settings.table(SEQUENCES))
    done = refresh_range(spark, events, settings.table(DAILY), settings.table(BEHAVIOUR), start, end, params,
                         per_day, always, events_path=settings.table(BRONZE))
    return {"behaviour_rows": delta_io.commit_rows(spark, settings.table(BEHAVIOUR)), "sequence_rows": seq_rows, **done}


def run_build(spark: SparkSession, settings, as_of: dt.date | None = None) -> dict:
    """Refresh one as-of day (default: the latest complete day in bronze). Always
    recomputes it; reads only the 30 ``event_date`` partitions its windows need."""
    t0 = time.perf_counter()
    day = as_of or latest_complete_day(spark, settings)
    # The data-quality gate judges the day being published before anything is written
    # (raises DataQualityError when behaviour.fail_on_quality is set and the day is flagged).
    quality = quality_gate(spark, settings, [day])
    lo, hi = window_read_range(day, day)
    # The day's own partial is always recomputed (reads one bronze partition); the 29
    # before it only when missing or stale (late data).
    written = build_range(spark, settings, day, day, always={day})
    return {
        "as_of": day.isoformat(),
        "read_event_dates": [lo.isoformat(), hi.isoformat()],
        **written,
        **quality,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def run_backfill(
    spark: SparkSession,
    settings,
    start: dt.date,
    end: dt.date,
    force: bool = False,
    progress=None,
) -> dict:
    """Compute every as-of day in [start, end] that is missing or stale (all with
    ``force``), in passes of ``behaviour.backfill_chunk_days`` days.

    ``progress(done_days, total_days)`` is called before the first pass and after each.
    Re-running a finished backfill does nothing; re-running after late data recomputes
    only the as-of days whose windows hold it.
    """
    if end < start:
        raise InputError(f"backfill end {end} is before its start {start}")
    t0 = time.perf_counter()
    # One narrow scan of bronze (event_date, ingested_at) decides both which as-of days
    # are stale and which daily partials are.
    per_day = day_ingested(_bronze(spark, settings), *window_read_range(start, end))
    todo = days_to_build(spark, settings, start, end, force, per_day)
    quality = quality_gate(spark, settings, todo)  # before any write; see run_build
    passes = _runs(todo, settings.behaviour.backfill_chunk_days)
    total = len(todo)
    done = 0
    rows = 0
    partial_days = 0
    if progress:
        progress(0, total)
    for a, b in passes:
        # --force recomputes the partials of the pass's windows too (e.g. after a change
        # of definitions); otherwise only missing or stale ones.
        lo, hi = window_read_range(a, b)
        written = build_range(spark, settings, a, b, per_day, always=set(_days(lo, hi)) if force else frozenset())
        rows += written.get("behaviour_rows") or 0
        partial_days += written["partial_days_recomputed"]
        done += (b - a).days + 1
        if progress:
            progress(done, total)
    n_days = (end - start).days + 1
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "days_in_range": n_days,
        "days_built": total,
        "days_skipped": n_days - total,
        "passes": [[a.isoformat(), b.isoformat()] for a, b in passes],
        "behaviour_rows": rows,
        "partial_days_recomputed": partial_days,
        **quality,
        "seconds": round(time.perf_counter() - t0, 3),
    }
