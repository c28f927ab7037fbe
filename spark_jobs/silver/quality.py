"""Data-quality gate for behaviour builds: is each event day that a build is about to
publish in line with the week before it?

Input: bronze.events (event_date partitions [first day - 7, last day]).
Output: a `QualityReport`: one `DayQuality` per checked event day (volume, null rates,
the trailing week's baseline and the reasons the day is flagged, if any).

Checks, per event day D against the trailing week D-7 .. D-1:
- volume: events(D) / mean daily events of the trailing week; flagged above
  `behaviour.max_volume_ratio` or below `behaviour.min_volume_ratio`. Days of the
  trailing week with no events count as 0 (a dead feed is what the gate exists to catch),
  but days before the table's first event day are not part of the week.
- null rates: the share of rows missing a field the event type should carry
  (item_id and category_id on every non-search event, price on purchases, query on
  searches); flagged when a rate rises more than `behaviour.max_null_rate_increase`
  (absolute, 0.2 = 20 percentage points) above the trailing week's pooled rate.
A day with fewer than MIN_HISTORY_DAYS of history before it is "not checked" (no baseline),
never flagged: the first days of a new warehouse must be buildable.

One aggregation over the needed partitions; the result is small (one row per day).
`gate()` raises `DataQualityError` before anything is written when
`behaviour.fail_on_quality` is set; otherwise the flags go into the run summary.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.errors import InputError
from spark_jobs import delta_io

EVENTS = "bronze.events"
TRAILING_DAYS = 7
MIN_HISTORY_DAYS = 3

# field -> (the event types that should carry it); null share measured over those rows only.
EXPECTED_FIELDS: dict[str, tuple[str, ...]] = {
    "item_id": ("view", "click", "cart", "fav", "purchase"),
    "category_id": ("view", "click", "cart", "fav", "purchase"),
    "price": ("purchase",),
    "query": ("search",),
}


class DataQualityError(InputError):
    """A day failed the data-quality gate and the build was configured to stop."""


@dataclass
class DayQuality:
    event_date: dt.date
    events: int
    baseline_events: float | None  # mean per day over the trailing week; None: no baseline
    volume_ratio: float | None
    null_rates: dict[str, float | None]
    baseline_null_rates: dict[str, float | None]
    flags: list[str] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        return self.baseline_events is not None


@dataclass
class QualityReport:
    days: list[DayQuality]

    @property
    def flagged(self) -> list[DayQuality]:
        return [d for d in self.days if d.flags]

    def summary(self) -> dict:
        """What a run summary carries: counts plus one line per flagged day."""
        return {
            "quality_days_checked": sum(1 for d in self.days if d.checked),
            "quality_days_flagged": len(self.flagged),
            "quality_flags": [f"{d.event_date}: " + "; ".join(d.flags) for d in self.flagged],
        }

    def as_rows(self) -> list[dict]:
        return [{**asdict(d), "checked": d.checked} for d in self.days]


def daily_counts(events: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """Per event_date in [start, end]: total events and, per expected field, the rows that
    should carry it and the rows missing it. Grain: one row per day that has events."""
    aggs = [F.count(F.lit(1)).alias("events")]
    for name, types in EXPECTED_FIELDS.items():
        expected = F.col("event_type").isin(*types)
        aggs.append(F.sum(expected.cast("long")).alias(f"{name}__expected"))
        aggs.append(F.sum((expected & F.col(name).isNull()).cast("long")).alias(f"{name}__missing"))
    return (
        events.where((F.col("event_date") >= F.lit(start)) & (F.col("event_date") <= F.lit(end)))
        .groupBy("event_date")
        .agg(*aggs)
    )


def _rate(missing: int, expected: int) -> float | None:
    return (missing / expected) if expected else None


def assess(counts: dict[dt.date, dict], days: list[dt.date], settings,
           first_day: dt.date | None = None) -> QualityReport:
    """Pure: compare each day's counts with its trailing week (counts: event_date -> row dict;
    first_day: the table's first event day, default the earliest day in counts)."""
    b = settings.behaviour
    if first_day is None:
        first_day = min(counts) if counts else None
    out = []
    for d in sorted(days):
        row = counts.get(d, {})
        history = [d - dt.timedelta(days=i) for i in range(1, TRAILING_DAYS + 1)]
        history = [h for h in history if first_day is not None and h >= first_day]
        trailing = [counts.get(h, {}) for h in history]
        total_trailing = sum(int(r.get("events") or 0) for r in trailing)
        events = int(row.get("events") or 0)
        rates = {f: _rate(int(row.get(f"{f}__missing") or 0), int(row.get(f"{f}__expected") or 0))
                 for f in EXPECTED_FIELDS}
        base_rates = {
            f: _rate(sum(int(r.get(f"{f}__missing") or 0) for r in trailing),
                     sum(int(r.get(f"{f}__expected") or 0) for r in trailing))
            for f in EXPECTED_FIELDS
        }
        if len(history) < MIN_HISTORY_DAYS or total_trailing == 0:
            out.append(DayQuality(d, events, None, None, rates, base_rates))
            continue
        baseline = total_trailing / len(history)
        ratio = events / baseline
        flags = []
        if ratio > b.max_volume_ratio:
            flags.append(f"volume {events:,} is {ratio:.2f}x the trailing week's mean {baseline:,.0f} "
                         f"(max {b.max_volume_ratio})")
        elif ratio < b.min_volume_ratio:
            flags.append(f"volume {events:,} is {ratio:.2f}x the trailing week's mean {baseline:,.0f} "
                         f"(min {b.min_volume_ratio})")
        for f in EXPECTED_FIELDS:
            now, before = rates[f], base_rates[f]
            if now is None:
                continue
            if now - (before or 0.0) > b.max_null_rate_increase:
                flags.append(f"{f} missing on {now:.1%} of rows (trailing week {(before or 0.0):.1%}, "
                             f"max increase {b.max_null_rate_increase:.0%})")
        out.append(DayQuality(d, events, round(baseline, 3), round(ratio, 4), rates, base_rates, flags))
    return QualityReport(out)


def check(spark: SparkSession, settings, days: list[dt.date]) -> QualityReport:
    """Assess the given event days against bronze.events (reads only the needed partitions)."""
    if not days:
        return QualityReport([])
    path = settings.table(EVENTS)
    if not delta_io.is_delta(spark, path):
        return QualityReport([])
    lo, hi = min(days) - dt.timedelta(days=TRAILING_DAYS), max(days)
    events = spark.read.format("delta").load(path)
    rows = daily_counts(events, lo, hi).collect()
    counts = {r["event_date"]: r.asDict() for r in rows}
    first = events.agg(F.min("event_date")).first()[0]  # answered from the Delta log's stats
    return assess(counts, days, settings, first_day=first)


def gate(spark: SparkSession, settings, days: list[dt.date]) -> dict:
    """Check `days`; raise DataQualityError (nothing written yet) when configured to fail,
    else return the summary entries for the run summary."""
    report = check(spark, settings, days)
    if report.flagged and settings.behaviour.fail_on_quality:
        first = report.flagged[0]
        more = f" (and {len(report.flagged) - 1} more day(s))" if len(report.flagged) > 1 else ""
        raise DataQualityError(
            f"data-quality gate failed for {first.event_date}: {first.flags[0]}{more}; nothing was written "
            "(set behaviour.fail_on_quality=false to build anyway, or fix and re-ingest the day)"
        )
    return report.summary()
