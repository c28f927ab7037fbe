"""Behaviour profiles: ``bronze.events`` -> ``silver.user_behaviour``.

Input: bronze events (schema ``EVENTS``), partitioned by ``event_date``.
Output grain: one row per user per ``as_of_date`` D for every user with at least one
event in the longest window (30 days: ``event_date`` in [D-29, D]); partitioned by
``as_of_date``. Definitions of every column: ``spark_jobs.feature_dictionary``.

How a range of as-of days is computed in ONE pass (no job per day):

1. read the events of [start-29, end] once (partition pruning on ``event_date``) and
   spread them by ``user_id``: every later aggregate and window is keyed by user;
2. daily per-user partials: counts per event type, spend, night events, gap-rule
   session starts, latest ingest time;
3. windows over days (``rangeBetween(-(N-1), 0)`` on the day number) turn the
   partials into 1/7/30-day sums for every as-of day;
4. exact distinct counts (items, categories, queries, source sessions): a key seen on
   days d1 < d2 < ... is inside the 30-day window of the as-of days
   union([di, di+29]); each maximal run of those intervals becomes a +1 at its first
   day and a -1 the day after its last, so a running sum over days gives the exact
   number of distinct keys in every window without ever materialising the sets;
5. affinity (top categories, top brand share): per (user, key) the windowed score is
   piecewise constant between "change days" (di and di+30); each constant segment is
   expanded only over the as-of days it covers, then ranked per (user, day).

A single day (incremental refresh) is the same code with start = end: it reads only the
30 partitions its windows need.
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
KIND_ITEM, KIND_CATEGORY, KIND_QUERY, KIND_SESSION, KIND_BRAND = 0, 1, 2, 3, 4
_COUNTED_KINDS = {
    KIND_ITEM: "distinct_items_30d",
    KIND_CATEGORY: "distinct_categories_30d",
    KIND_QUERY: "distinct_queries_30d",
    KIND_SESSION: "_source_sessions_30d",
}
_SCORED_KINDS = (KIND_CATEGORY, KIND_BRAND)

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


# ------------------------------------------------------------------- daily partials
def daily_partials(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """One row per (user_id, day) with additive partial aggregates of that day.

    Gap-rule sessions (events without a source session id): ``gap_starts`` counts the
    events of the day that start a session (first event of the user in the data read,
    or idle gap > session_gap_minutes since the user's previous such event, which may
    lie on an earlier day); ``first_gap_start`` says whether the day's first such event
    starts one. The window step needs the latter because a session straddling the
    window start still counts once.
    """
    gap_us = params.session_gap_minutes * 60 * 1_000_000
    no_sid = F.col("session_id").isNull()
    ts = F.unix_micros("event_ts")
    by_time = Window.partitionBy("user_id").orderBy(ts, F.col("event_id"))
    prev_gap_ts = F.last(F.when(no_sid, ts), ignorenulls=True).over(
        by_time.rowsBetween(Window.unboundedPreceding, -1)
    )
    ev = events.withColumn("ts_us", ts).withColumn(
        "is_gap_start",
        F.when(no_sid, (prev_gap_ts.isNull() | ((F.col("ts_us") - prev_gap_ts) > gap_us)).cast("int")),
    )
    hour = F.hour("event_ts")
    night = (hour >= params.night_start_hour) & (hour < params.night_end_hour)
    is_purchase = F.col("event_type") == "purchase"
    priced_purchase = is_purchase & F.col("price").isNotNull()
    weight = _weight_expr(params)
    aggs = [F.count_if(F.col("event_type") == t).cast("long").alias(c) for t, c in _TYPE_COUNTS.items()]
    aggs += [
        F.count(F.lit(1)).alias("n_events"),
        F.count_if(night).cast("long").alias("n_night"),
        F.sum(F.when(priced_purchase, F.col("price") * F.coalesce(F.col("quantity"), F.lit(1)))).alias("spend"),
        F.sum(F.when(priced_purchase, F.col("price"))).alias("price_sum"),
        F.count_if(priced_purchase).cast("long").alias("price_n"),
        F.sum(F.when(F.col("category_id").isNotNull(), weight)).alias("cat_score"),
        F.sum(F.when(F.col("brand").isNotNull(), weight)).alias("brand_score"),
        F.sum("is_gap_start").cast("long").alias("gap_starts"),
        F.min(F.when(no_sid, F.struct(F.col("ts_us"), F.col("event_id"), F.col("is_gap_start")))).alias("_first_gap"),
        F.max("ingested_at").alias("max_ingested_at"),
    ]
    return (
        ev.groupBy("user_id", "day")
        .agg(*aggs)
        .withColumn("first_gap_start", F.col("_first_gap.is_gap_start"))
        .drop("_first_gap")
    )


# ------------------------------------------------------------- keyed (distinct, affinity)
def _keyed(events: DataFrame, params: BehaviourParams) -> DataFrame:
    """(user_id, kind, key, day, score): one row per key seen by a user on a day."""
    weight = _weight_expr(params)
    keys = F.array(
        F.struct(F.lit(KIND_ITEM).alias("kind"), F.col("item_id").alias("key")),
        F.struct(F.lit(KIND_CATEGORY).alias("kind"), F.col("category_id").alias("key")),
        F.struct(F.lit(KIND_QUERY).alias("kind"), F.col("query").alias("key")),
        F.struct(F.lit(KIND_SESSION).alias("kind"), F.col("session_id").alias("key")),
        F.struct(F.lit(KIND_BRAND).alias("kind"), F.col("brand").alias("key")),
    )
    return (
        events.select("user_id", "day", weight.alias("w"), F.explode(keys).alias("k"))
        .where(F.col("k.key").isNotNull())
        .groupBy("user_id", F.col("k.kind").alias("kind"), F.col("k.key").alias("key"), "day")
        .agg(F.sum("w").alias("score"))
    )


def keyed_day_rows(events: DataFrame, params: BehaviourParams, start: dt.date, end: dt.date) -> DataFrame:
    """Per (user_id, day): distinct-count deltas per kind and the affinity of that day.

    Output columns: user_id, day, d_<kind> (+1/-1 interval boundaries, see module
    docstring), top_cats (up to 3 category ids for as-of day ``day``), top_cat_score,
    top_brand_score. Affinity values are only present for as-of days in [start, end].
    """
    w = LONGEST_WINDOW
    s, e = day_number(start), day_number(end)
    per_key = _keyed(events, params).groupBy("user_id", "kind", "key").agg(
        F.array_sort(F.collect_list(F.struct("day", "score"))).alias("ds")
    )
    # Interval boundaries of the union of [d, d+w-1] over the key's days.
    plus = (
        "transform(filter(sequence(0, size(ds) - 1), i -> i = 0 OR ds[i].day - get(ds, i - 1).day >= {w}),"
        " i -> named_struct('day', ds[i].day, 'delta', 1, 'score', CAST(NULL AS BIGINT)))"
    ).format(w=w)
    minus = (
        "transform(filter(sequence(0, size(ds) - 1), i -> i = size(ds) - 1 OR get(ds, i + 1).day - ds[i].day >= {w}),"
        " i -> named_struct('day', ds[i].day + {w}, 'delta', -1, 'score', CAST(NULL AS BIGINT)))"
    ).format(w=w)
    # Piecewise-constant windowed score: change days c (every d and d+w); on
    # [c_j, c_{j+1}-1] the score is the sum over days in (c_j-w, c_j]. Each positive
    # segment is expanded over the as-of days in [start, end] it covers.
    change = "array_sort(array_distinct(concat(transform(ds, x -> x.day), transform(ds, x -> x.day + {w}))))".format(w=w)
    segments = (
        "flatten(transform("
        "  filter(transform(sequence(0, size(cs) - 2), j -> named_struct("
        "      'lo', greatest(cs[j], {s}), 'hi', least(cs[j + 1] - 1, {e}),"
        "      'score', aggregate(filter(ds, x -> x.day > cs[j] - {w} AND x.day <= cs[j]), 0L, (acc, x) -> acc + x.score))),"
        "    g -> g.lo <= g.hi AND g.score > 0),"
        "  g -> transform(sequence(g.lo, g.hi), dd -> named_struct('day', dd, 'delta', 0, 'score', g.score))))"
    ).format(w=w, s=s, e=e)
    counted = F.col("kind") != KIND_BRAND
    scored = F.col("kind").isin(*_SCORED_KINDS)
    rows = per_key.withColumn("cs", F.when(scored, F.expr(change))).select(
        "user_id",
        "kind",
        "key",
        F.explode(
            F.concat(
                F.when(counted, F.concat(F.expr(plus), F.expr(minus))).otherwise(F.array()),
                F.when(scored, F.expr(segments)).otherwise(F.array()),
            )
        ).alias("r"),
    ).select("user_id", "kind", "key", "r.day", "r.delta", "r.score")
    rows = rows.where((F.col("day") <= e) & ((F.col("delta") != 0) | (F.col("score") > 0)))
    is_seg = F.col("delta") == 0
    aggs = [
        F.sum(F.when((F.col("kind") == k) & ~is_seg, F.col("delta")).otherwise(0)).cast("long").alias(f"d_{k}")
        for k in _COUNTED_KINDS
    ]
    aggs += [
        F.slice(
            F.array_sort(
                F.collect_list(
                    F.when(is_seg & (F.col("kind") == KIND_CATEGORY), F.struct((-F.col("score")).alias("neg"), F.col("key")))
                )
            ),
            1,
            TOP_CATEGORIES,
        ).alias("_top"),
        F.max(F.when(is_seg & (F.col("kind") == KIND_BRAND), F.col("score"))).alias("top_brand_score"),
    ]
    return (
        rows.groupBy("user_id", "day")
        .agg(*aggs)
        .withColumn("top_cats", F.transform("_top", lambda x: x["key"]))
        .withColumn("top_cat_score", -F.get(F.col("_top"), 0)["neg"])
        .drop("_top")
    )


# ------------------------------------------------------------------------- as-of grid
def as_of_grid(daily: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """(user_id, day) for every as-of day in [start, end] with an event in its window."""
    w = LONGEST_WINDOW
    s, e = day_number(start), day_number(end)
    prev = F.lag("day").over(Window.partitionBy("user_id").orderBy("day"))
    lo = F.greatest(F.col("day"), F.coalesce(prev + w, F.col("day")), F.lit(s))
    hi = F.least(F.col("day") + (w - 1), F.lit(e))
    return daily.select("user_id", "day", lo.alias("lo"), hi.alias("hi")).where(F.col("lo") <= F.col("hi")).select(
        "user_id", F.explode(F.sequence("lo", "hi")).alias("day"), F.lit(True).alias("is_grid")
    )


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
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    ev = prepare_events(events, start, end).select(
        "event_id", "user_id", "item_id", "category_id", "event_type", "event_ts", "day",
        "price", "quantity", "session_id", "query", "brand", "ingested_at",
    )
    # One shuffle by user: every aggregate and window below is keyed by user first,
    # so Spark reuses this partitioning instead of shuffling the events again.
    ev = ev.repartition(partitions, "user_id") if partitions else ev.repartition("user_id")
    daily = daily_partials(ev, params)
    keyed = keyed_day_rows(ev, params, start, end)
    grid = as_of_grid(daily, start, end)

    cols_daily = [c for c in daily.columns if c not in ("user_id", "day")]
    cols_keyed = [c for c in keyed.columns if c not in ("user_id", "day")]
    union = (
        daily.select("user_id", "day", *cols_daily, *[F.lit(None).alias(c) for c in cols_keyed], F.lit(None).cast("boolean").alias("is_grid"))
        .unionByName(keyed.select("user_id", "day", *[F.lit(None).alias(c) for c in cols_daily], *cols_keyed, F.lit(None).cast("boolean").alias("is_grid")), allowMissingColumns=False)
        .unionByName(grid.select("user_id", "day", *[F.lit(None).alias(c) for c in cols_daily + cols_keyed], "is_grid"))
    )
    # Peers (rows of the same day) share a range frame, so the three kinds of rows need
    # no join: a grid row sees the partials and deltas of its own and earlier days.
    order = Window.partitionBy("user_id").orderBy("day")

    def last_n(n: int) -> Window:
        return order.rangeBetween(-(n - 1), 0)

    w30, same_day = last_n(30), last_n(1)
    cumulative = order.rangeBetween(Window.unboundedPreceding, 0)
    sel = [F.col("user_id"), F.col("day"), F.col("is_grid")]
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
        F.min(F.when(F.col("first_gap_start").isNotNull(), F.struct("day", "first_gap_start"))).over(w30).alias("_first_gap"),
        F.max(F.when(F.col("n_events") > 0, F.col("day"))).over(w30).alias("last_event_day"),
        F.max(F.when(F.col("n_purchase") > 0, F.col("day"))).over(w30).alias("last_purchase_day"),
        F.count(F.when(F.col("n_events") > 0, True)).over(w30).alias("active_days_30d"),
        F.max("max_ingested_at").over(w30).alias("created_timestamp"),
        F.max("top_cats").over(same_day).alias("top_cats"),
        F.max("top_cat_score").over(same_day).alias("top_cat_score"),
        F.max("top_brand_score").over(same_day).alias("top_brand_score"),
    ]
    win = union.select(*sel).where(F.col("is_grid"))
    return finalize(win)


def _ratio(num: Column, den: Column) -> Column:
    return F.when(den > 0, num.cast("double") / den.cast("double"))


def finalize(win: DataFrame) -> DataFrame:
    """Windowed sums per (user, as-of day) -> the contract columns."""
    as_of = F.date_from_unix_date("day")
    # Gap-rule sessions touching the window: starts inside it, plus the session of the
    # window's first such event when that event continues a session begun earlier.
    gap_sessions = F.when(
        F.col("_first_gap").isNotNull(),
        F.col("gap_starts_30d") + 1 - F.col("_first_gap.first_gap_start"),
    ).otherwise(F.lit(0))
    sessions = (gap_sessions + F.col("_source_sessions_30d")).cast("long")
    win = win.withColumn("sessions_30d", sessions)
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
        "built": [d.isoformat() for d in todo],
        "passes": len(passes),
        "behaviour_rows": rows,
        "seconds": round(time.perf_counter() - t0, 3),
    }
