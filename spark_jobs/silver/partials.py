"""Daily partials, the behaviour job's stage A: bronze events -> ``silver.user_daily`` rows.

Input: bronze events (schema ``EVENTS``), any dates; only the event dates asked for are
read (the filter on ``event_date`` becomes partition pruning).
Output: ``USER_DAILY`` rows, partitioned by ``event_date``; grain: one row per
(user, kind, key, event_date).

The events of a day are aggregated once. Kinds are the user's day itself (KIND_DAY, key
"": the day's counts, spend, night events, within-day idle-gap session starts,
first/last idle-gap event time, max ``ingested_at`` as ``created_timestamp``), and the
items, categories, queries, source sessions and brands the user touched that day (with
their summed interest weight as ``score``). A day's partial depends on that day's events
only, so it is computed once and recomputed only when its bronze partition changes (late
data: its max ``ingested_at`` moves). Idle-gap sessions that cross midnight are joined
later, by the roll-up (``spark_jobs.silver.rollup``), which turns the 30 partials of a
window into an as-of row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from core.errors import InputError

# Scores are kept as integers (weight x WEIGHT_SCALE) so sums are exact whatever the
# summation order: ties, and thus the ranking, are deterministic on any engine.
WEIGHT_SCALE = 1000

# The kinds of partial rows: the user's day, then the keys touched that day.
KIND_DAY, KIND_ITEM, KIND_CATEGORY, KIND_QUERY, KIND_SESSION, KIND_BRAND = 0, 1, 2, 3, 4, 5

_TYPE_COUNTS = {
    "view": "n_view",
    "click": "n_click",
    "search": "n_search",
    "cart": "n_cart",
    "fav": "n_fav",
    "purchase": "n_purchase",
}


@dataclass(frozen=True)
class BehaviourParams:
    """The knobs of the feature definitions (from ``settings.behaviour``)."""

    session_gap_minutes: int = 30
    category_weights: dict[str, float] = field(default_factory=dict)
    night_start_hour: int = 0
    night_end_hour: int = 6

    @classmethod
    def from_settings(cls, settings) -> "BehaviourParams":
        b = settings.behaviour
        return cls(
            session_gap_minutes=b.session_gap_minutes,
            category_weights=dict(b.category_weights),
            night_start_hour=b.night_start_hour,
            night_end_hour=b.night_end_hour,
        )

    def __post_init__(self) -> None:
        # Roll-ups join sessions across midnight using the previous calendar day only.
        if not 0 < self.session_gap_minutes < 24 * 60:
            raise InputError(f"behaviour.session_gap_minutes must be between 1 and 1439, got {self.session_gap_minutes}")

    def weight_int(self, event_type: str) -> int:
        return int(round(self.category_weights.get(event_type, 0.0) * WEIGHT_SCALE))


# ------------------------------------------------------------------------------- helpers
def _weight_expr(params: BehaviourParams) -> Column:
    expr = F.lit(0).cast("long")
    for etype in sorted(params.category_weights):
        expr = F.when(F.col("event_type") == etype, F.lit(params.weight_int(etype))).otherwise(expr)
    return expr.cast("long")


# -------------------------------------------------------------- events -> daily partials
def with_gap_starts(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """Flag events that start an idle-gap session WITHIN their day (events without a
    source session id): the user's first such event of the day, or one that follows the
    previous such event of the day by more than ``session_gap_minutes``.

    Sessions crossing midnight are joined up at roll-up time (``rollup.windowed``), so a
    day's partial depends on that day's events only.
    """
    gap_us = params.session_gap_minutes * 60 * 1_000_000
    no_sid = F.col("session_id").isNull()
    ts = F.unix_micros("event_ts")
    by_time = Window.partitionBy("user_id", "day").orderBy(ts, F.col("event_id"))
    prev = F.last(F.when(no_sid, ts), ignorenulls=True).over(by_time.rowsBetween(Window.unboundedPreceding, -1))
    return events.withColumn("ts_us", ts).withColumn(
        "gap_start",
        F.when(no_sid, (prev.isNull() | ((F.col("ts_us") - prev) > gap_us)).cast("long")),
    )


# Per-event contributions to a user's day (summed per (user, day)).
DAY_SUMS = [*_TYPE_COUNTS.values(), "n_events", "n_night", "spend", "price_sum", "price_n", "cat_score",
            "brand_score", "gap_starts"]
# What a KIND_DAY partial carries (``max_ingested_at`` is stored as ``created_timestamp``).
PAYLOAD = [*DAY_SUMS, "first_gap_us", "last_gap_us", "max_ingested_at"]
_DOUBLE_SUMS = ("spend", "price_sum")


def day_payload(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """Events (with ``day``) -> one row per (user_id, day): the day's additive partials
    (``PAYLOAD``). Idle-gap sessions come from the events without a source session id
    only (a narrow sorted pass); everything else is one map-side-combined aggregate."""
    weight = _weight_expr(params)
    hour = F.hour("event_ts")
    night = ((hour >= params.night_start_hour) & (hour < params.night_end_hour)).cast("long")
    priced = (F.col("event_type") == "purchase") & F.col("price").isNotNull()
    contrib = {c: (F.col("event_type") == t).cast("long") for t, c in _TYPE_COUNTS.items()}
    contrib.update({
        "n_events": F.lit(1).cast("long"),
        "n_night": night,
        "spend": F.when(priced, F.col("price") * F.coalesce(F.col("quantity"), F.lit(1))),
        "price_sum": F.when(priced, F.col("price")),
        "price_n": priced.cast("long"),
        "cat_score": F.when(F.col("category_id").isNotNull(), weight),
        "brand_score": F.when(F.col("brand").isNotNull(), weight),
    })
    sums = [F.sum(e.cast("double" if c in _DOUBLE_SUMS else "long")).alias(c) for c, e in contrib.items()]
    day = events.groupBy("user_id", "day").agg(*sums, F.max("ingested_at").alias("max_ingested_at"))
    no_sid = events.where(F.col("session_id").isNull()).select("user_id", "day", "event_id", "event_ts", "session_id")
    gaps = with_gap_starts(no_sid, params).groupBy("user_id", "day").agg(
        F.sum("gap_start").alias("gap_starts"),
        F.min("ts_us").alias("first_gap_us"),
        F.max("ts_us").alias("last_gap_us"),
    )
    return day.join(gaps, ["user_id", "day"], "left").select("user_id", "day", *PAYLOAD)


def key_day_rows(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """Events (with ``day``) -> one row per (user_id, kind, key, day) for the items,
    categories, queries, source sessions and brands touched, with the summed interest
    weight as ``score`` (small rows: the explode carries three fields)."""
    weight = _weight_expr(params)

    def rec(kind: int, key: str) -> Column:
        return F.struct(F.lit(kind).alias("kind"), F.col(key).alias("key"), weight.alias("score"))

    recs = F.array(rec(KIND_ITEM, "item_id"), rec(KIND_CATEGORY, "category_id"), rec(KIND_QUERY, "query"),
                   rec(KIND_SESSION, "session_id"), rec(KIND_BRAND, "brand"))
    r = events.select("user_id", "day", F.explode(recs).alias("r")).where(F.col("r.key").isNotNull())
    return r.groupBy("user_id", F.col("r.kind").alias("kind"), F.col("r.key").alias("key"), "day").agg(
        F.sum("r.score").alias("score"))


def daily_partials(events: DataFrame, lo: dt.date, hi: dt.date, params: BehaviourParams) -> DataFrame:
    """Bronze events -> ``USER_DAILY`` rows (plus ``day``) for the event dates [lo, hi].

    Pure. The filter on ``event_date`` is what the Delta scan turns into partition
    pruning. The raw events are never shuffled: both aggregates combine map-side first.
    """
    ev = events.where((F.col("event_date") >= F.lit(lo)) & (F.col("event_date") <= F.lit(hi))).select(
        "event_id", "user_id", "item_id", "category_id", "event_type", "event_ts",
        F.unix_date("event_date").alias("day"),
        "price", "quantity", "session_id", "query", "brand", "ingested_at",
    )
    days = day_payload(ev, params).select(
        "user_id", F.lit(KIND_DAY).alias("kind"), F.lit("").alias("key"), "day",
        F.col("n_events").alias("score"), *PAYLOAD)
    keys = key_day_rows(ev, params)
    nulls = [F.lit(None).cast("double" if c in _DOUBLE_SUMS else "timestamp" if c == "max_ingested_at" else "long")
             .alias(c) for c in PAYLOAD]
    keys = keys.select("user_id", "kind", "key", "day", "score", *nulls)
    return days.unionByName(keys).withColumn("event_date", F.date_from_unix_date("day")).withColumnRenamed(
        "max_ingested_at", "created_timestamp")

