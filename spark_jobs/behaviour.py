"""Behaviour profiles: ``bronze.events`` -> ``silver.user_behaviour``.

Input: bronze events (schema ``EVENTS``), partitioned by ``event_date``.
Output grain: one row per user per ``as_of_date`` D for every user with at least one
event in the longest window (30 days: ``event_date`` in [D-29, D]); partitioned by
``as_of_date``. Definitions of every column: ``spark_jobs.feature_dictionary``.

How a range of as-of days [start, end] is computed in ONE pass (no job per day), as a
single linear plan with one shuffle (the events by user; every later aggregate and
window is keyed by user first, so Spark keeps that partitioning):

1. read the events of [start-29, end] (partition pruning on ``event_date``); flag the
   events that start an idle-gap session (one sort of each user's events by time);
2. key-day rows: per (user, kind, key, day) the summed contributions, where the kinds
   are the user's day itself (carrying the day's partial counts, spend, night events,
   session starts...), and the items, categories, queries, source sessions and brands
   the user touched that day (carrying the weighted interest);
3. one sorted pass per key over its days gives
   * exact distinct counts: a key seen on days d1 < d2 < ... is inside the 30-day
     window of as-of days union([di, di+29]); each maximal run becomes a +1 on its
     first day and a -1 the day after its last, so a running sum is the exact number
     of distinct keys in every window, without ever materialising the sets;
   * affinity: the windowed score of a key is constant between "change days" (di and
     di+30); each positive segment is expanded only over the as-of days it covers
     (for the user's own day, those segments are exactly the output rows);
4. per (user, day): the day's partials, the deltas and that day's top categories;
   windows over days (``rangeBetween(-(N-1), 0)`` on the day number) give the 1/7/30
   day sums; the output keeps the as-of rows.

A single day (incremental refresh) is the same code with start = end: it reads only the
30 partitions its windows need, so its cost does not grow with the history.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_jobs.schemas import USER_BEHAVIOUR, conform

LONGEST_WINDOW = 30
TOP_CATEGORIES = 3
# Scores are kept as integers (weight x WEIGHT_SCALE) so sums are exact whatever the
# summation order: ties, and thus the ranking, are deterministic on any engine.
WEIGHT_SCALE = 1000
MICROS_PER_DAY = 86_400_000_000

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

    def weight_int(self, event_type: str) -> int:
        return int(round(self.category_weights.get(event_type, 0.0) * WEIGHT_SCALE))


# --------------------------------------------------------------------------- helpers
def day_number(d: dt.date) -> int:
    """Days since 1970-01-01 (Spark's ``unix_date``)."""
    return (d - dt.date(1970, 1, 1)).days


def end_of_day(col: Column) -> Column:
    """The last microsecond of a date column, UTC: what Feast joins on."""
    return F.timestamp_micros((F.unix_date(col) + 1) * F.lit(MICROS_PER_DAY) - 1)


def window_read_range(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
    """The event dates the as-of days [start, end] depend on."""
    return start - dt.timedelta(days=LONGEST_WINDOW - 1), end


def _weight_expr(params: BehaviourParams) -> Column:
    expr = F.lit(0).cast("long")
    for etype in sorted(params.category_weights):
        expr = F.when(F.col("event_type") == etype, F.lit(params.weight_int(etype))).otherwise(expr)
    return expr.cast("long")


def prepare_events(events: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """Events whose windows matter for as-of days [start, end], with a day number.

    The filter on ``event_date`` is what the Delta scan turns into partition pruning.
    """
    lo, hi = window_read_range(start, end)
    return events.where(
        (F.col("event_date") >= F.lit(lo)) & (F.col("event_date") <= F.lit(hi))
    ).withColumn("day", F.unix_date("event_date"))


# ------------------------------------------------------------ 1. events -> key-day rows
def with_gap_starts(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """Flag events that start an idle-gap session (events without a source session id).

    An event starts one when it is the user's first such event in the data read or
    follows the previous such event by more than ``session_gap_minutes``. The previous
    event may lie on an earlier day; a session straddling a window start is handled by
    the window step (its first in-window event always counts).
    """
    gap_us = params.session_gap_minutes * 60 * 1_000_000
    no_sid = F.col("session_id").isNull()
    ts = F.unix_micros("event_ts")
    by_time = Window.partitionBy("user_id").orderBy(ts, F.col("event_id"))
    prev = F.last(F.when(no_sid, ts), ignorenulls=True).over(by_time.rowsBetween(Window.unboundedPreceding, -1))
    return events.withColumn("ts_us", ts).withColumn(
        "gap_start",
        F.when(no_sid, (prev.isNull() | ((F.col("ts_us") - prev) > gap_us)).cast("long")),
    )


# Per-event contributions to a user's day (summed per (user, day)).
_DAY_SUMS = [*_TYPE_COUNTS.values(), "n_events", "n_night", "spend", "price_sum", "price_n", "cat_score",
             "brand_score", "gap_starts"]


def key_day_rows(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """Events -> one row per (user_id, kind, key, day, is_drop) with summed contributions.

    Kinds: the user's day itself (KIND_DAY, key ""), carrying the day's additive
    partials; item, category, query, source session and brand keys, carrying the
    weighted score. Scored kinds (day, category, brand) also get an ``is_drop`` row 30
    days later, when their contribution leaves the window.
    """
    w = LONGEST_WINDOW
    weight = _weight_expr(params)
    hour = F.hour("event_ts")
    night = ((hour >= params.night_start_hour) & (hour < params.night_end_hour)).cast("long")
    priced = (F.col("event_type") == "purchase") & F.col("price").isNotNull()
    one = F.lit(1).cast("long")
    contrib = {c: (F.col("event_type") == t).cast("long") for t, c in _TYPE_COUNTS.items()}
    contrib.update({
        "n_events": one,
        "n_night": night,
        "spend": F.when(priced, F.col("price") * F.coalesce(F.col("quantity"), F.lit(1))),
        "price_sum": F.when(priced, F.col("price")),
        "price_n": priced.cast("long"),
        "cat_score": F.when(F.col("category_id").isNotNull(), weight),
        "brand_score": F.when(F.col("brand").isNotNull(), weight),
        "gap_starts": F.col("gap_start"),
    })
    # First idle-gap event of the day: ts*2 + (1 - starts) so min() picks the earliest
    # event and, among events at the same instant, the one that starts a session.
    first_gap = F.col("ts_us") * 2 + (1 - F.col("gap_start"))
    null_long, null_double = F.lit(None).cast("long"), F.lit(None).cast("double")

    def rec(kind: int, key: Column, score: Column, day: Column, drop: bool, payload: bool) -> Column:
        fields = [F.lit(kind).alias("kind"), key.alias("key"), day.alias("day"), F.lit(drop).alias("is_drop"),
                  score.alias("score")]
        for c in _DAY_SUMS:
            typ = "double" if c in ("spend", "price_sum") else "long"
            fields.append((contrib[c].cast(typ) if payload else F.lit(None).cast(typ)).alias(c))
        fields.append((first_gap if payload else null_long).alias("first_gap"))
        fields.append((F.col("ingested_at") if payload else F.lit(None).cast("timestamp")).alias("ingested_at"))
        return F.struct(*fields)

    day, later, zero = F.col("day"), F.col("day") + w, F.lit(0).cast("long")
    recs = F.array(
        rec(KIND_DAY, F.lit(""), one, day, False, True),
        rec(KIND_DAY, F.lit(""), zero, later, True, False),
        rec(KIND_ITEM, F.col("item_id"), weight, day, False, False),
        rec(KIND_CATEGORY, F.col("category_id"), weight, day, False, False),
        rec(KIND_CATEGORY, F.col("category_id"), zero, later, True, False),
        rec(KIND_QUERY, F.col("query"), weight, day, False, False),
        rec(KIND_SESSION, F.col("session_id"), weight, day, False, False),
        rec(KIND_BRAND, F.col("brand"), weight, day, False, False),
        rec(KIND_BRAND, F.col("brand"), zero, later, True, False),
    )
    r = events.select("user_id", F.explode(recs).alias("r")).where(F.col("r.key").isNotNull())
    aggs = [F.sum(f"r.{c}").alias(c) for c in ("score", *_DAY_SUMS)]
    aggs += [F.min("r.first_gap").alias("first_gap"), F.max("r.ingested_at").alias("max_ingested_at")]
    return r.groupBy(
        "user_id", F.col("r.kind").alias("kind"), F.col("r.key").alias("key"), F.col("r.day").alias("day"),
        F.col("r.is_drop").alias("is_drop"),
    ).agg(*aggs)


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
    keep = ["user_id", "kind", "key", *_DAY_SUMS, "first_gap", "max_ingested_at"]
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
        F.min(F.when(payload, F.col("first_gap"))).alias("first_gap"),
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


def windowed(days: DataFrame) -> DataFrame:
    """Per-user-day rows -> windowed sums for the output (as-of) rows only."""
    order = Window.partitionBy("user_id").orderBy("day")

    def last_n(n: int) -> Window:
        return order.rangeBetween(-(n - 1), 0)

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
        F.sum("gap_starts").over(w30).alias("gap_starts_30d"),
        # The window's first idle-gap event (its day's min of ts*2 + (1 - starts)).
        F.min("first_gap").over(w30).alias("first_gap_30d"),
        F.max(F.when(F.col("n_events") > 0, F.col("day"))).over(w30).alias("last_event_day"),
        F.max(F.when(F.col("n_purchase") > 0, F.col("day"))).over(w30).alias("last_purchase_day"),
        F.count(F.when(F.col("n_events") > 0, True)).over(w30).alias("active_days_30d"),
        F.max("max_ingested_at").over(w30).alias("created_timestamp"),
    ]
    return days.select(*sel).where(F.col("is_grid"))


# ------------------------------------------------------------------------- the transform
def behaviour_features(
    events: DataFrame,
    start: dt.date,
    end: dt.date,
    params: BehaviourParams,
    partitions: int | None = None,
) -> DataFrame:
    """Bronze events -> ``USER_BEHAVIOUR`` rows for every as-of day in [start, end].

    ``events`` may hold any dates: only [start-29, end] is used, and nothing after an
    as-of day ever reaches its row. Pure: no I/O.

    The plan is one linear chain with a single shuffle (events by user): every later
    aggregate and window is keyed by user first, so Spark keeps that partitioning.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    ev = prepare_events(events, start, end).select(
        "event_id", "user_id", "item_id", "category_id", "event_type", "event_ts", "day",
        "price", "quantity", "session_id", "query", "brand", "ingested_at",
    )
    # An explicit partition count: AQE would otherwise coalesce a small input into one
    # partition and run every later step on one core.
    n = partitions or int(events.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    ev = ev.repartition(n, "user_id")
    rows = key_day_rows(with_gap_starts(ev, params), params)
    return finalize(windowed(per_user_day(spread_to_days(rows, start, end))))


def _ratio(num: Column, den: Column) -> Column:
    return F.when(den > 0, num.cast("double") / den.cast("double"))


def finalize(win: DataFrame) -> DataFrame:
    """Windowed sums per (user, as-of day) -> the contract columns."""
    as_of = F.date_from_unix_date("day")
    # Idle-gap sessions touching the window: the starts inside it, plus one when the
    # window's first such event continues a session begun before the window.
    first_starts = 1 - (F.col("first_gap_30d") % 2)
    gap_sessions = F.when(
        F.col("first_gap_30d").isNotNull(), F.col("gap_starts_30d") + 1 - first_starts
    ).otherwise(F.lit(0))
    win = win.withColumn("sessions_30d", (gap_sessions + F.col("_source_sessions_30d")).cast("long"))
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


def _bronze(spark: SparkSession, settings) -> DataFrame:
    from spark_jobs import delta_io

    return delta_io.read(spark, settings.table(BRONZE), "bronze.events: run `persona ingest` first")


def latest_complete_day(spark: SparkSession, settings, today: dt.date | None = None) -> dt.date:
    """The latest ``event_date`` in bronze whose UTC day is over (never today or later).

    A historical log (generated, Taobao 2017) ends on a complete day; a live feed's
    current day is still filling up, so the default build stops at yesterday.
    """
    from persona.errors import NotBuiltError

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


def _window_max_ingested(spark: SparkSession, settings, start: dt.date, end: dt.date) -> dict[dt.date, object]:
    """For each as-of day in [start, end]: the latest ``ingested_at`` among the events
    its windows read (None when its window holds no event). Reads two columns."""
    lo, hi = window_read_range(start, end)
    per_day = {
        r["event_date"]: r["m"]
        for r in _bronze(spark, settings)
        .where((F.col("event_date") >= F.lit(lo)) & (F.col("event_date") <= F.lit(hi)))
        .groupBy("event_date")
        .agg(F.max("ingested_at").alias("m"))
        .collect()
    }
    out: dict[dt.date, object] = {}
    for i in range((end - start).days + 1):
        d = start + dt.timedelta(days=i)
        vals = [per_day[x] for x in (d - dt.timedelta(days=k) for k in range(LONGEST_WINDOW)) if x in per_day]
        out[d] = max(vals) if vals else None
    return out


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


def days_to_build(spark: SparkSession, settings, start: dt.date, end: dt.date, force: bool = False) -> list[dt.date]:
    """The as-of days of [start, end] a backfill must (re)compute.

    A day is current when its rows exist and their newest ``created_timestamp`` equals
    the newest ``ingested_at`` of the events in its window: late data ingested for any
    day of the window makes it stale again, so re-running a backfill recomputes exactly
    the as-of days the late data affects. A day whose window holds no event and that
    has no rows needs nothing.
    """
    all_days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    if force:
        return all_days
    expected = _window_max_ingested(spark, settings, start, end)
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


def _commit_rows(spark: SparkSession, path: str) -> int | None:
    """Rows written by the table's last commit (Delta operation metrics, no scan)."""
    from delta.tables import DeltaTable

    try:
        metrics = DeltaTable.forPath(spark, path).history(1).collect()[0]["operationMetrics"] or {}
        return int(metrics.get("numOutputRows", 0))
    except Exception:  # metrics are informative only
        return None


def build_range(spark: SparkSession, settings, start: dt.date, end: dt.date) -> dict:
    """Compute and write as-of days [start, end] of both silver tables in one pass each.

    Sequences are written first: the behaviour rows double as the "day is built" marker
    that resumable backfills check, so a pass interrupted in between is redone.
    """
    from spark_jobs import delta_io
    from spark_jobs.schemas import USER_SEQUENCES
    from spark_jobs.sequences import user_sequences

    events = _bronze(spark, settings)
    params = BehaviourParams.from_settings(settings)
    seq = user_sequences(events, start, end, settings.behaviour.sequence_length)
    delta_io.replace_where(seq, settings.table(SEQUENCES), USER_SEQUENCES, "as_of_date", start, end)
    seq_rows = _commit_rows(spark, settings.table(SEQUENCES))
    feats = behaviour_features(events, start, end, params)
    delta_io.replace_where(feats, settings.table(BEHAVIOUR), USER_BEHAVIOUR, "as_of_date", start, end)
    return {"behaviour_rows": _commit_rows(spark, settings.table(BEHAVIOUR)), "sequence_rows": seq_rows}


def run_build(spark: SparkSession, settings, as_of: dt.date | None = None) -> dict:
    """Refresh one as-of day (default: the latest complete day in bronze). Always
    recomputes it; reads only the 30 ``event_date`` partitions its windows need."""
    import time

    t0 = time.perf_counter()
    day = as_of or latest_complete_day(spark, settings)
    lo, hi = window_read_range(day, day)
    written = build_range(spark, settings, day, day)
    return {
        "as_of": day.isoformat(),
        "read_event_dates": [lo.isoformat(), hi.isoformat()],
        **written,
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

    from persona.errors import InputError

    if end < start:
        raise InputError(f"backfill end {end} is before its start {start}")
    t0 = time.perf_counter()
    todo = days_to_build(spark, settings, start, end, force)
    passes = _runs(todo, settings.behaviour.backfill_chunk_days)
    total = len(todo)
    done = 0
    rows = 0
    if progress:
        progress(0, total)
    for a, b in passes:
        written = build_range(spark, settings, a, b)
        rows += written.get("behaviour_rows") or 0
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
        "seconds": round(time.perf_counter() - t0, 3),
    }
