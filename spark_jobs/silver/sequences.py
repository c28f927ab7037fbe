"""Recent-event sequences for the encoder: ``bronze.events`` -> ``silver.user_sequences``.

Input: bronze events (schema ``EVENTS``). Output grain: one row per user per
``as_of_date`` D, for the same users as ``silver.user_behaviour`` (an event in
[D-29, D]); partitioned by ``as_of_date``.

A row holds the user's last ``sequence_length`` (L) events with ``event_date`` in
[D-29, D], oldest first (ties in time broken by ``event_id``), as parallel arrays
``item_ids``, ``category_ids``, ``event_types`` and ``gap_seconds`` (seconds since the
previous event of the sequence; ``gap_seconds[0]`` is 0), right-padded to exactly L with
"" and 0.0; ``seq_len`` is the number of real events. Missing item or category ids
are "". The look-back stops at the 30-day window so a daily refresh reads the same 30
partitions as the behaviour job and never the whole history.

One pass for a range of as-of days: an event e (the p-th of its user in time order)
belongs to the sequence of D exactly when day(e) <= D <= day(e)+29 and fewer than L of
the user's events fall after e up to D, i.e. D < day of the user's (p+L)-th event.
Each event is expanded only over that range of as-of days, then gathered per
(user, D): the work is proportional to the output, not to days x history.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from core.tables import LONGEST_WINDOW
from spark_jobs.silver.windows import day_number, end_of_day, prepare_events
from spark_jobs.schemas import USER_SEQUENCES, conform


def user_sequences(
    events: DataFrame,
    start: dt.date,
    end: dt.date,
    length: int = 50,
    partitions: int | None = None,
) -> DataFrame:
    """Bronze events -> ``USER_SEQUENCES`` rows for every as-of day in [start, end]. Pure."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    if length < 1:
        raise ValueError("sequence length must be at least 1")
    s, e = day_number(start), day_number(end)
    ev = prepare_events(events, start, end).select(
        "user_id", "event_id", "event_ts", "day", "item_id", "category_id", "event_type", "ingested_at"
    )
    ev = ev.repartition(partitions, "user_id") if partitions else ev.repartition("user_id")
    ts = F.unix_micros("event_ts")
    order = Window.partitionBy("user_id").orderBy(ts, F.col("event_id"))
    # The day of the user's L-th later event: from that day on, e has been pushed out.
    pushed_out = F.lead("day", length).over(order)
    lo = F.greatest(F.col("day"), F.lit(s))
    hi = F.least(F.col("day") + (LONGEST_WINDOW - 1), F.coalesce(pushed_out - 1, F.lit(e)), F.lit(e))
    spread = (
        ev.select(
            "user_id",
            lo.alias("lo"),
            hi.alias("hi"),
            F.struct(
                ts.alias("ts"),
                F.col("event_id"),
                F.coalesce("item_id", F.lit("")).alias("item"),
                F.coalesce("category_id", F.lit("")).alias("cat"),
                F.col("event_type").alias("type"),
            ).alias("ev"),
            "ingested_at",
        )
        .where(F.col("lo") <= F.col("hi"))
        .select("user_id", F.explode(F.sequence("lo", "hi")).alias("day"), "ev", "ingested_at")
    )
    seq = spread.groupBy("user_id", "day").agg(
        F.array_sort(F.collect_list("ev")).alias("evs"),
        F.max("ingested_at").alias("created_timestamp"),
    )
    n = F.size("evs")
    pad = F.greatest(F.lit(length) - n, F.lit(0))

    def padded(values, filler):
        return F.concat(values, F.array_repeat(filler, pad))

    gaps = F.transform(
        F.col("evs"),
        lambda x, i: F.when(i == 0, F.lit(0.0)).otherwise(
            (x["ts"] - F.col("evs")[F.greatest(i - 1, F.lit(0))]["ts"]).cast("double") / 1e6
        ),
    )
    out = seq.select(
        "user_id",
        F.date_from_unix_date("day").alias("as_of_date"),
        "created_timestamp",
        padded(F.transform("evs", lambda x: x["item"]), F.lit("")).alias("item_ids"),
        padded(F.transform("evs", lambda x: x["cat"]), F.lit("")).alias("category_ids"),
        padded(F.transform("evs", lambda x: x["type"]), F.lit("")).alias("event_types"),
        padded(F.transform(gaps, lambda g: g.cast("float")), F.lit(0.0).cast("float")).alias("gap_seconds"),
        n.cast("int").alias("seq_len"),
    ).withColumn("event_timestamp", end_of_day(F.col("as_of_date")))
    return conform_sequences(out)


def conform_sequences(df: DataFrame) -> DataFrame:
    """Select to the table schema; element nullability is asserted with coalesce because
    a cast cannot narrow it."""
    def non_null(filler):
        return lambda x: F.coalesce(x, filler)

    fixed = df
    for name, filler in (("item_ids", F.lit("")), ("category_ids", F.lit("")), ("event_types", F.lit("")),
                         ("gap_seconds", F.lit(0.0).cast("float"))):
        fixed = fixed.withColumn(name, F.transform(name, non_null(filler)))
    return conform(fixed, USER_SEQUENCES)
