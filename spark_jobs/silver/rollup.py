"""Roll-up, the behaviour job's stage B: daily partials -> ``silver.user_behaviour`` rows.

Input: ``USER_DAILY`` rows (``spark_jobs.silver.partials``), any dates; only the
partials of [start-29, end] are used.
Output: ``USER_BEHAVIOUR`` rows; grain: one row per user per as-of day D in [start, end]
for every user with at least one event in the longest window (30 days: ``event_date``
in [D-29, D]). Definitions of every column: ``spark_jobs.silver.feature_dictionary``.
Everything here is pure (DataFrame -> DataFrame).

A range of as-of days is rolled up as a single linear plan keyed by user (one shuffle:
the partials by user; every later aggregate and window is keyed by user first, so Spark
keeps that partitioning):

* exact distinct counts: a key seen on days d1 < d2 < ... is inside the 30-day window of
  as-of days union([di, di+29]); each maximal run becomes a +1 on its first day and a -1
  the day after its last, so a running sum is the exact number of distinct keys in every
  window, without ever materialising the sets;
* affinity: the windowed score of a key is constant between "change days" (di and
  di+30); each positive segment is expanded only over the as-of days it covers (for the
  user's own day, those segments are exactly the output rows);
* per (user, day): the day's partials, the deltas and that day's top categories; windows
  over days (``rangeBetween(-(N-1), 0)`` on the day number) give the 1/7/30 day sums;
  the output keeps the as-of rows;
* idle-gap sessions: the within-day starts of the window's days, minus one for each day
  of the window (but its first) whose first idle-gap event continues the previous day's
  last one (``session_gap_minutes`` < one day, so only the previous calendar day can
  hold the event before).

A single as-of day (the daily refresh) takes a shorter path, ``rollup_one_day``: hash
aggregates over its 30 small partials, no run/segment logic; its double sums are added
in day order, so it writes exactly what a range roll-up writes.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from core.tables import LONGEST_WINDOW
from spark_jobs.schemas import USER_BEHAVIOUR, conform
from spark_jobs.silver.partials import (
    DAY_SUMS,
    KIND_BRAND,
    KIND_CATEGORY,
    KIND_DAY,
    KIND_ITEM,
    KIND_QUERY,
    KIND_SESSION,
    PAYLOAD,
    BehaviourParams,
    daily_partials,
)
from spark_jobs.silver.windows import day_number, end_of_day, window_read_range

TOP_CATEGORIES = 3

# Kinds of keys whose 30-day distinct count is a feature.
_COUNTED_KINDS = {
    KIND_ITEM: "distinct_items_30d",
    KIND_CATEGORY: "distinct_categories_30d",
    KIND_QUERY: "distinct_queries_30d",
    KIND_SESSION: "_source_sessions_30d",
}
# Kinds whose windowed score the roll-up tracks (for KIND_DAY: the active days).
_SCORED_KINDS = (KIND_DAY, KIND_CATEGORY, KIND_BRAND)

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


# ---------------------------------------------- partials -> key-day rows (range roll-up)
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


# ----------------------------------------------------- key-day rows -> (user, as-of day)
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
    keep = ["user_id", "kind", "key", *PAYLOAD]
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

    aggs = [on_day(c) for c in DAY_SUMS]
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
    as-of day ever reaches its row. ``partitions``: the roll-up's one shuffle (default
    ``spark.sql.shuffle.partitions``); the partials never shuffle the raw events.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    lo, hi = window_read_range(start, end)
    partials = daily_partials(events, lo, hi, params)
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
