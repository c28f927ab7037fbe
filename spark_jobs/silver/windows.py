"""Day arithmetic shared by the silver modules (roll-up, behaviour jobs, sequences): day
numbers, the end-of-day timestamp Feast joins on, and which event dates an as-of range
reads."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from core.tables import LONGEST_WINDOW

MICROS_PER_DAY = 86_400_000_000


def day_number(d: dt.date) -> int:
    """Days since 1970-01-01 (Spark's ``unix_date``)."""
    return (d - dt.date(1970, 1, 1)).days


def end_of_day(col: Column) -> Column:
    """The last microsecond of a date column, UTC: what Feast joins on."""
    return F.timestamp_micros((F.unix_date(col) + 1) * F.lit(MICROS_PER_DAY) - 1)


def window_read_range(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    """The event dates the as-of days [start, end] depend on."""
    return start - dt.timedelta(days=LONGEST_WINDOW - 1), end


def prepare_events(events: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """Events whose windows matter for as-of days [start, end], with a day number.

    The filter on ``event_date`` is what the Delta scan turns into partition pruning.
    """
    lo, hi = window_read_range(start, end)
    return events.where(
        (F.col("event_date") >= F.lit(lo)) & (F.col("event_date") <= F.lit(hi))
    ).withColumn("day", F.unix_date("event_date"))
