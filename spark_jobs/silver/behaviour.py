"""Behaviour profiles: ``bronze.events`` -> ``silver.user_behaviour``.

Input: bronze events (schema ``EVENTS``), partitioned by ``event_date``.
Output grain: one row per user per ``as_of_date`` D for every user with at least one
event in the longest window (30 days: ``event_date`` in [D-29, D]); partitioned by
``as_of_date``. Definitions of every column: ``spark_jobs.silver.feature_dictionary``.

Two stages, so a daily refresh never re-reads 30 days of raw events:

A. daily partials (``silver.user_daily``, partitioned by ``event_date``; grain: one row
   per (user, kind, key, event_date)): the events of a day, aggregated once. Kinds are
   the user's day itself (KIND_DAY, key "": the day's counts, spend, night events,
   within-day idle-gap session starts, first/last idle-gap event time, max
   ``ingested_at``), and the items, categories, queries, source sessions and brands the
   user touched that day (with their summed interest weight). A day's partial depends
   on that day's events only, so it is computed once and recomputed only when its
   bronze partition changes (late data: its max ``ingested_at`` moves).
B. roll-up of as-of days [start, end] from the partials of [start-29, end], as a single
   linear plan keyed by user (one shuffle: the partials by user; every later aggregate
   and window is keyed by user first, so Spark keeps that partitioning):
   * exact distinct counts: a key seen on days d1 < d2 < ... is inside the 30-day
     window of as-of days union([di, di+29]); each maximal run becomes a +1 on its
     first day and a -1 the day after its last, so a running sum is the exact number
     of distinct keys in every window, without ever materialising the sets;
   * affinity: the windowed score of a key is constant between "change days" (di and
     di+30); each positive segment is expanded only over the as-of days it covers
     (for the user's own day, those segments are exactly the output rows);
   * per (user, day): the day's partials, the deltas and that day's top categories;
     windows over days (``rangeBetween(-(N-1), 0)`` on the day number) give the 1/7/30
     day sums; the output keeps the as-of rows.
   * idle-gap sessions: the within-day starts of the window's days, minus one for each
     day of the window (but its first) whose first idle-gap event continues the
     previous day's last one (``session_gap_minutes`` < one day, so only the previous
     calendar day can hold the event before).

A backfill computes the partials of every needed day in one pass over their events,
then rolls up all its as-of days in one pass. A daily refresh computes one day's
partial (reads one bronze partition) and rolls up 30 small daily partials with hash
aggregates only (``rollup_one_day``: a single as-of day needs no run/segment logic; its
double sums are added in day order, so it writes exactly what a backfill writes).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from core.delta_log import stats_day_max
from core.tables import LONGEST_WINDOW
from spark_jobs.silver.windows import day_number, end_of_day, window_read_range
from spark_jobs.silver.quality import gate as quality_gate
from spark_jobs.schemas import USER_BEHAVIOUR, USER_DAILY, conform

TOP_CATEGORIES = 3
# Scores are kept as integers (weight x WEIGHT_SCALE) so sums are exact whatever the
# summation order: ties, and thus the ranking, are deterministic on any engine.
WEIGHT_SCALE = 1000

# Kinds of keys whose 30-day distinct count is a feature.
KIND_DAY, KIND_ITEM, KIND_CATEGORY, KIND_QUERY, KIND_SESSION, KIND_BRAND = 0, 1, 2, 3, 4, 5
_COUNTED_KINDS = {
    KIND_ITEM: "distinct_items_30d",
    KIND_CATEGORY: "distinct_categories_30d",
    KIND_QUERY: "distinct_queries_30d",
    KIND_SESSION: "_source_sessions_30d",
}
_SCORED_KINDS = (KIND_DAY, KIND_CATEGORY, KIND_BRAND)

_TYPE_COUNTS = {
    "view": "n_view",
    "click": "n_click",
    "search": "n_search",
    "cart": "n_cart",
    "fav": "n_fav",
    "purchase": "n_purchase",
}

# (output column, daily partial, window length in days)
_WINDOW_COUNTS = [
    ("views_1d", "n_view", 1),
    ("views_7d", "n_view", 7),
    ("views_30d", "n_view", 30),
    ("clicks_7d", "n_click", 7),
    ("searches_7d", "n_search", 7),
    ("carts_7d", "n_cart", 7),
    ("carts_30d", "n_cart", 30),
    ("favs_7d", "n_fav", 7),
    ("favs_30d", "n_fav", 30),
    ("purchases_7d", "n_purchase", 7),
    ("purchases_30d", "n_purchase", 30),
]


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
            from core.errors import InputError

            raise InputError(f"behaviour.session_gap_minutes must be between 1 and 1439, got {self.session_gap_minutes}")

    def weight_int(self, event_type: str) -> int:
        return int(round(self.category_weights.get(event_type, 0.0) * WEIGHT_SCALE))


# --------------------------------------------------------------------------- helpers
def _weight_expr(params: BehaviourParams) -> Column:
    expr = F.lit(0).cast("long")
    for etype in sorted(params.category_weights):
        expr = F.when(F.col("event_type") == etype, F.lit(params.weight_int(etype))).otherwise(expr)
    return expr.cast("long")


# ------------------------------------------------------------ 1. events -> key-day rows
def with_gap_starts(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """Flag events that start an idle-gap session WITHIN their day (events without a
    source session id): the user's first such event of the day, or one that follows the
    previous such event of the day by more than ``session_gap_minutes``.

    Sessions crossing midnight are joined up at roll-up time (see ``windowed``), so a
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
_DAY_SUMS = [*_TYPE_COUNTS.values(), "n_events", "n_night", "spend", "price_sum", "price_n", "cat_score",
             "brand_score", "gap_starts"]


_PAYLOAD = [*_DAY_SUMS, "first_gap_us", "last_gap_us", "max_ingested_at"]
_DOUBLE_SUMS = ("spend", "price_sum")


def day_payload(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """Events (with ``day``) -> one row per (user_id, day): the day's additive partials
    (``_PAYLOAD``). Idle-gap sessions come from the events without a source session id
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
    return day.join(gaps, ["user_id", "day"], "left").select("user_id", "day", *_PAYLOAD)


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


def daily_partials(
    events: DataFrame, lo: dt.date, hi: dt.date, params: BehaviourParams, partitions: int | None = None
) -> DataFrame:
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
        F.col("n_events").alias("score"), *_PAYLOAD)
    keys = key_day_rows(ev, params)
    nulls = [F.lit(None).cast("double" if c in _DOUBLE_SUMS else "timestamp" if c == "max_ingested_at" else "long")
             .alias(c) for c in _PAYLOAD]
    keys = keys.select("user_id", "kind", "key", "day", "score", *nulls)
    return days.unionByName(keys).withColumn("event_date", F.date_from_unix_date("day")).withColumnRenamed(
        "max_ingested_at", "created_timestamp")


def with_drop_rows(partials: DataFrame) -> DataFrame:
    """Scored kinds (day, category, brand) also get an ``is_drop`` row 30 days after a
    day they were seen (score 0), the day their contribution leaves the window."""
    w = LONGEST_WINDOW
    marks = F.when(F.col("kind").isin(*_SCORED_KINDS), F.array(F.lit(False), F.lit(True))).otherwise(
        F.array(F.lit(False)))
    out = partials.select(*[c for c in partials.columns if c not in ("day", "score")], "day", "score",
                          F.explode(marks).alias("is_drop"))
    return out.withColumn("day", F.when(F.col("is_drop"), F.col("day") + w).otherwise(F.col("day"))).withColumn(
        "score", F.when(F.col("is_drop"), F.lit(0).cast("long")).otherwise(F.col("score")))


# -------------------------------------------------- 2. key-day rows -> (user, as-of day)
def spread_to_days(rows: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """Key-day rows -> rows keyed by the day they act on, with what they carry.

    Per key, one sorted pass (window over the key's days) decides:
    * counted kinds: +1 on a day the key enters the 30-day window (not seen in the 29
      days before), -1 thirty days after a day it was seen when it is not seen again
      within 29 days: a running sum of these is the exact distinct count;
    * scored kinds: the windowed score is constant from one change day (a day seen, or
      a drop day) to the next; the segment is expanded over the as-of days of
      [start, end] it covers. For KIND_DAY the score is the number of active days, so
      its segments are exactly the (user, as-of day) rows to produce.
    * KIND_DAY rows also pass their day's partials through, on their own day.
    """
    w = LONGEST_WINDOW
    s, e = day_number(start), day_number(end)
    by_key = Window.partitionBy("user_id", "kind", "key").orderBy("day")
    seen = F.when(~F.col("is_drop"), F.lit(1))
    # Peers (a day seen and a drop day on the same day) share range frames and get the
    # same score; lead() gives all but the last of them an empty segment.
    rows = rows.select(
        "*",
        F.count(seen).over(by_key.rangeBetween(-(w - 1), -1)).alias("seen_before"),
        F.count(seen).over(by_key.rangeBetween(1, w - 1)).alias("seen_after"),
        F.sum("score").over(by_key.rangeBetween(-(w - 1), 0)).alias("score_at"),
        F.lead("day", 1).over(by_key).alias("next_change"),
    )
    counted = F.col("kind").isin(*_COUNTED_KINDS) & ~F.col("is_drop")
    scored = F.col("kind").isin(*_SCORED_KINDS)
    day = F.col("day")
    null_long = F.lit(None).cast("long")

    def rng(lo: Column, hi: Column, delta: int, score: Column, payload: bool) -> Column:
        return F.struct(lo.alias("lo"), hi.alias("hi"), F.lit(delta).alias("delta"), score.alias("score"),
                        F.lit(payload).alias("payload"))

    ranges = F.array(
        F.when(counted & (F.col("seen_before") == 0), rng(day, day, 1, null_long, False)),
        F.when(counted & (F.col("seen_after") == 0), rng(day + w, day + w, -1, null_long, False)),
        F.when(scored & (F.col("score_at") > 0), rng(
            F.greatest(day, F.lit(s)), F.least(F.coalesce(F.col("next_change") - 1, F.lit(e)), F.lit(e)),
            0, F.col("score_at"), False)),
        F.when((F.col("kind") == KIND_DAY) & ~F.col("is_drop"), rng(day, day, 0, null_long, True)),
    )
    keep = ["user_id", "kind", "key", *_PAYLOAD]
    return (
        rows.select(*keep, F.explode(ranges).alias("r"))
        .where(F.col("r").isNotNull() & (F.col("r.lo") <= F.col("r.hi")) & (F.col("r.lo") <= e))
        .select(*keep, "r.delta", "r.score", "r.payload", F.explode(F.sequence("r.lo", "r.hi")).alias("day"))
    )


def per_user_day(spread: DataFrame) -> DataFrame:
    """Spread rows -> one row per (user_id, day): that day's partials, distinct-count
    deltas, and for as-of days its affinity and whether it is an output row."""
    payload = F.col("payload")
    seg = (F.col("delta") == 0) & ~payload

    def on_day(c: str) -> Column:
        return F.sum(F.when(payload, F.col(c))).alias(c)

    aggs = [on_day(c) for c in _DAY_SUMS]
    aggs += [
        F.min(F.when(payload, F.col("first_gap_us"))).alias("first_gap_us"),
        F.max(F.when(payload, F.col("last_gap_us"))).alias("last_gap_us"),
        F.max(F.when(payload, F.col("max_ingested_at"))).alias("max_ingested_at"),
        F.max(F.when(seg & (F.col("kind") == KIND_DAY), F.lit(True))).alias("is_grid"),
    ]
    aggs += [
        F.sum(F.when((F.col("kind") == k) & ~seg & ~payload, F.col("delta"))).cast("long").alias(f"d_{k}")
        for k in _COUNTED_KINDS
    ]
    aggs += [
        F.slice(
            F.array_sort(F.collect_list(F.when(seg & (F.col("kind") == KIND_CATEGORY),
                                               F.struct((-F.col("score")).alias("neg"), F.col("key"))))),
            1, TOP_CATEGORIES,
        ).alias("_top"),
        F.max(F.when(seg & (F.col("kind") == KIND_BRAND), F.col("score"))).alias("top_brand_score"),
    ]
    return (
        spread.groupBy("user_id", "day")
        .agg(*aggs)
        .withColumn("top_cats", F.transform("_top", lambda x: x["key"]))
        .withColumn("top_cat_score", -F.get(F.col("_top"), 0)["neg"])
        .drop("_top")
    )


def windowed(days: DataFrame, params: BehaviourParams) -> DataFrame:
    """Per-user-day rows -> windowed sums for the output (as-of) rows only."""
    order = Window.partitionBy("user_id").orderBy("day")
    gap_us = params.session_gap_minutes * 60 * 1_000_000

    def last_n(n: int) -> Window:
        return order.rangeBetween(-(n - 1), 0)

    # 1 when the day's first idle-gap event continues the previous calendar day's last
    # one (same session across midnight). The row before is day-1 when that day exists.
    cont = F.when(
        (F.lag("day", 1).over(order) == F.col("day") - 1)
        & ((F.col("first_gap_us") - F.lag("last_gap_us", 1).over(order)) <= gap_us),
        F.lit(1),
    ).otherwise(F.lit(0))
    days = days.withColumn("cont", cont.cast("long"))
    w30 = last_n(LONGEST_WINDOW)
    cumulative = order.rangeBetween(Window.unboundedPreceding, 0)
    sel = [F.col("user_id"), F.col("day"), F.col("is_grid"), "top_cats", "top_cat_score", "top_brand_score"]
    for out, part, n in _WINDOW_COUNTS:
        sel.append(F.coalesce(F.sum(part).over(last_n(n)), F.lit(0)).cast("long").alias(out))
    for k, out in _COUNTED_KINDS.items():
        sel.append(F.coalesce(F.sum(f"d_{k}").over(cumulative), F.lit(0)).cast("long").alias(out))
    sel += [
        F.sum("n_events").over(w30).alias("events_30d"),
        F.sum("n_night").over(w30).alias("night_30d"),
        F.sum("spend").over(w30).alias("spend_30d_raw"),
        F.sum("price_sum").over(w30).alias("price_sum_30d"),
        F.sum("price_n").over(w30).alias("price_n_30d"),
        F.sum("cat_score").over(w30).alias("cat_score_30d"),
        F.sum("brand_score").over(w30).alias("brand_score_30d"),
        # Idle-gap sessions touching the window: within-day starts, minus the days
        # (all but the window's first) that continue the previous day's session.
        (F.coalesce(F.sum("gap_starts").over(w30), F.lit(0))
         - F.coalesce(F.sum("cont").over(last_n(LONGEST_WINDOW - 1)), F.lit(0))).alias("gap_sessions_30d"),
        F.max(F.when(F.col("n_events") > 0, F.col("day"))).over(w30).alias("last_event_day"),
        F.max(F.when(F.col("n_purchase") > 0, F.col("day"))).over(w30).alias("last_purchase_day"),
        F.count(F.when(F.col("n_events") > 0, True)).over(w30).alias("active_days_30d"),
        F.max("max_ingested_at").over(w30).alias("created_timestamp"),
    ]
    return days.select(*sel).where(F.col("is_grid"))


def rollup_one_day(p: DataFrame, day: int, params: BehaviourParams) -> DataFrame:
    """Partials of [D-29, D] (with ``day``, hash-partitioned by user) -> the windowed
    sums of the single as-of day D, as ``windowed`` gives them, with hash aggregates only
    (no sort of the key rows): a daily refresh's roll-up.

    Double sums are added in day order (``aggregate`` over the day-sorted list), as the
    window frames of ``windowed`` do, so a refresh and a backfill write identical bits.
    """
    w = LONGEST_WINDOW
    gap_us = params.session_gap_minutes * 60 * 1_000_000
    keys = p.where(F.col("kind") != KIND_DAY).groupBy("user_id", "kind", "key").agg(F.sum("score").alias("score"))
    kind = F.col("kind")
    per_key = keys.groupBy("user_id").agg(
        *[F.count(F.when(kind == k, True)).cast("long").alias(out) for k, out in _COUNTED_KINDS.items()],
        F.slice(F.array_sort(F.collect_list(F.when((kind == KIND_CATEGORY) & (F.col("score") > 0),
                                                   F.struct((-F.col("score")).alias("neg"), F.col("key"))))),
                1, TOP_CATEGORIES).alias("_top"),
        F.max(F.when((kind == KIND_BRAND) & (F.col("score") > 0), F.col("score"))).alias("top_brand_score"),
    )
    order = Window.partitionBy("user_id").orderBy("day")
    d = p.where(kind == KIND_DAY).withColumn("cont", F.when(
        (F.lag("day", 1).over(order) == F.col("day") - 1)
        & ((F.col("first_gap_us") - F.lag("last_gap_us", 1).over(order)) <= gap_us)
        & (F.col("day") > day - (w - 1)), F.lit(1)).otherwise(F.lit(0)).cast("long"))

    def in_last(n: int, c: str) -> Column:
        return F.sum(F.when(F.col("day") > day - n, F.col(c)))

    def in_order(c: str) -> Column:  # a double sum in day order
        xs = F.array_sort(F.collect_list(F.struct("day", F.col(c).alias("v"))))
        vals = F.filter(xs, lambda x: x["v"].isNotNull())
        return F.when(F.size(vals) > 0, F.aggregate(vals, F.lit(0.0).cast("double"), lambda acc, x: acc + x["v"]))

    aggs = [F.coalesce(in_last(n, part), F.lit(0)).cast("long").alias(out) for out, part, n in _WINDOW_COUNTS]
    aggs += [
        F.sum("n_events").alias("events_30d"),
        F.sum("n_night").alias("night_30d"),
        in_order("spend").alias("spend_30d_raw"),
        in_order("price_sum").alias("price_sum_30d"),
        F.sum("price_n").alias("price_n_30d"),
        F.sum("cat_score").alias("cat_score_30d"),
        F.sum("brand_score").alias("brand_score_30d"),
        (F.coalesce(F.sum("gap_starts"), F.lit(0)) - F.sum("cont")).alias("gap_sessions_30d"),
        F.max("day").alias("last_event_day"),
        F.max(F.when(F.col("n_purchase") > 0, F.col("day"))).alias("last_purchase_day"),
        F.count(F.lit(1)).alias("active_days_30d"),
        F.max("max_ingested_at").alias("created_timestamp"),
    ]
    per_day = d.groupBy("user_id").agg(*aggs)
    counts = {out: F.coalesce(F.col(out), F.lit(0).cast("long")) for out in _COUNTED_KINDS.values()}
    return (
        per_day.join(per_key, "user_id", "left")
        .withColumns(counts)
        .withColumn("day", F.lit(day))
        .withColumn("is_grid", F.lit(True))
        .withColumn("top_cats", F.transform("_top", lambda x: x["key"]))
        .withColumn("top_cat_score", -F.get(F.col("_top"), 0)["neg"])
        .drop("_top")
    )


# ------------------------------------------------------------------------- the transform
def features_from_partials(
    partials: DataFrame,
    start: dt.date,
    end: dt.date,
    params: BehaviourParams,
    partitions: int | None = None,
    repartition: bool = True,
) -> DataFrame:
    """Daily partials (``USER_DAILY``, any dates) -> ``USER_BEHAVIOUR`` rows for every
    as-of day in [start, end]. Only partials of [start-29, end] are used. Pure.

    The chain runs on one shuffle: the partials by user (every later aggregate and
    window is keyed by user first). ``repartition=False`` when ``partials`` is already
    hash-partitioned by user.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    lo, hi = window_read_range(start, end)
    p = partials.where((F.col("event_date") >= F.lit(lo)) & (F.col("event_date") <= F.lit(hi)))
    if "day" not in p.columns:
        p = p.withColumn("day", F.unix_date("event_date"))
    p = p.withColumnRenamed("created_timestamp", "max_ingested_at")
    if repartition:
        n = partitions or int(partials.sparkSession.conf.get("spark.sql.shuffle.partitions"))
        p = p.repartition(n, "user_id")
    if start == end:  # a daily refresh: hash aggregates over the 30 partials, no sort
        return finalize(rollup_one_day(p.drop("event_date"), day_number(start), params))
    rows = with_drop_rows(p.drop("event_date"))
    return finalize(windowed(per_user_day(spread_to_days(rows, start, end)), params))


def behaviour_features(
    events: DataFrame,
    start: dt.date,
    end: dt.date,
    params: BehaviourParams,
    partitions: int | None = None,
) -> DataFrame:
    """Bronze events -> ``USER_BEHAVIOUR`` rows for every as-of day in [start, end]:
    the daily partials of [start-29, end] rolled up, in one plan (one shuffle). Pure.

    ``events`` may hold any dates: only [start-29, end] is used, and nothing after an
    as-of day ever reaches its row.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    lo, hi = window_read_range(start, end)
    partials = daily_partials(events, lo, hi, params, partitions)
    return features_from_partials(partials, start, end, params, partitions)


def _ratio(num: Column, den: Column) -> Column:
    return F.when(den > 0, num.cast("double") / den.cast("double"))


def finalize(win: DataFrame) -> DataFrame:
    """Windowed sums per (user, as-of day) -> the contract columns."""
    as_of = F.date_from_unix_date("day")
    win = win.withColumn("sessions_30d", (F.col("gap_sessions_30d") + F.col("_source_sessions_30d")).cast("long"))
    out = win.select(
        "user_id",
        as_of.alias("as_of_date"),
        end_of_day(as_of).alias("event_timestamp"),
        "created_timestamp",
        *[c for c, _, _ in _WINDOW_COUNTS],
        *[c for c in _COUNTED_KINDS.values() if not c.startswith("_")],
        F.coalesce(F.col("spend_30d_raw"), F.lit(0.0)).alias("spend_30d"),
        _ratio(F.col("price_sum_30d"), F.col("price_n_30d")).alias("avg_purchase_price_30d"),
        _ratio(F.col("carts_30d"), F.col("views_30d")).alias("cart_rate_30d"),
        _ratio(F.col("purchases_30d"), F.col("views_30d")).alias("purchase_rate_30d"),
        _ratio(F.col("purchases_30d"), F.col("carts_30d")).alias("cart_to_purchase_30d"),
        (F.col("day") - F.col("last_event_day")).cast("int").alias("days_since_last_event"),
        (F.col("day") - F.col("last_purchase_day")).cast("int").alias("days_since_last_purchase"),
        F.col("active_days_30d").cast("long").alias("active_days_30d"),
        "sessions_30d",
        _ratio(F.col("events_30d"), F.col("sessions_30d")).alias("avg_session_events_30d"),
        _ratio(F.col("night_30d"), F.col("events_30d")).alias("night_share_30d"),
        # transform + coalesce: an array<string> whose elements Spark knows are non-null,
        # as the schema says (a cast cannot narrow element nullability).
        F.transform(
            F.coalesce(F.col("top_cats"), F.array().cast("array<string>")), lambda x: F.coalesce(x, F.lit(""))
        ).alias("top_categories_30d"),
        _ratio(F.col("top_cat_score"), F.col("cat_score_30d")).alias("top_category_share_30d"),
        _ratio(F.col("top_brand_score"), F.col("brand_score_30d")).alias("top_brand_share_30d"),
    )
    return conform(out, USER_BEHAVIOUR)


# =============================================================================== jobs
# Everything below reads and writes tables; everything above is pure.
BRONZE = "bronze.events"
BEHAVIOUR = "silver.user_behaviour"
SEQUENCES = "silver.user_sequences"
DAILY = "silver.user_daily"


def _bronze(spark: SparkSession, settings) -> DataFrame:
    from spark_jobs import delta_io

    return delta_io.read(spark, settings.table(BRONZE), "bronze.events: run `persona ingest` first")


def latest_complete_day(spark: SparkSession, settings, today: dt.date | None = None) -> dt.date:
    """The latest ``event_date`` in bronze whose UTC day is over (never today or later).

    A historical log (generated, Taobao 2017) ends on a complete day; a live feed's
    current day is still filling up, so the default build stops at yesterday.
    """
    from core.errors import NotBuiltError

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
    from spark_jobs import delta_io

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
    from spark_jobs import delta_io

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
    from spark_jobs import delta_io

    lo, hi = window_read_range(start, end)
    recomputed = refresh_partials(spark, events, daily_path, lo, hi, params, expected, always, events_path)
    partials = spark.read.format("delta").load(daily_path)
    feats = features_from_partials(partials, start, end, params)
    delta_io.replace_where(feats, out_path, USER_BEHAVIOUR, "as_of_date", start, end)
    return {"partial_days_recomputed": len(recomputed)}


def _built_days(spark: SparkSession, settings, start: dt.date, end: dt.date) -> dict[dt.date, object]:
    """as_of_date -> max(created_timestamp) of the behaviour rows already written."""
    from spark_jobs import delta_io

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
    that resumable backfills check, so a pass interrupted in between is redone.
    """
    from spark_jobs import delta_io
    from spark_jobs.schemas import USER_SEQUENCES
    from spark_jobs.silver.sequences import user_sequences

    events = _bronze(spark, settings)
    params = BehaviourParams.from_settings(settings)
    seq = user_sequences(events, start, end, settings.behaviour.sequence_length)
    delta_io.replace_where(seq, settings.table(SEQUENCES), USER_SEQUENCES, "as_of_date", start, end)
    seq_rows = delta_io.commit_rows(spark, settings.table(SEQUENCES))
    done = refresh_range(spark, events, settings.table(DAILY), settings.table(BEHAVIOUR), start, end, params,
                         per_day, always, events_path=settings.table(BRONZE))
    # The data-quality gate runs after this, from persona/commands/build.py (_quality_gate).
    return {"behaviour_rows": delta_io.commit_rows(spark, settings.table(BEHAVIOUR)), "sequence_rows": seq_rows, **done}


def run_build(spark: SparkSession, settings, as_of: dt.date | None = None) -> dict:
    """Refresh one as-of day (default: the latest complete day in bronze). Always
    recomputes it; reads only the 30 ``event_date`` partitions its windows need."""
    import time

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
    import time

    from core.errors import InputError

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
