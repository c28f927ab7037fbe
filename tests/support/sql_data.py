"""Synthetic bronze/silver/gold tables for the SQL tests and bench.sql, one small
warehouse per test run, and a row comparison that tolerates the engines'
representation differences (PyHive returns dates and arrays as strings; float sums
differ in the last bits)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path

from pyspark.sql import functions as F

from core.settings import load_settings
from spark_jobs.schemas import EVENTS, USER_BEHAVIOUR, USER_PROFILES, conform

USERS, DAYS, EVENTS_PER_USER = 40, 3, 5
START = dt.date(2024, 3, 4)  # a Monday: cohorts start on week boundaries
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def sql_home(spark, tmp_path_factory) -> Path:
    """A persona home holding synthetic bronze/silver/gold tables, written once per run
    (both SQL test modules reuse it)."""
    home = tmp_path_factory.getbasetemp() / "persona-sql-home"
    marker = home / ".tables-written"
    if not marker.exists():
        settings = load_settings(home=home, environ={})
        write_synthetic_tables(spark, settings, users=USERS, days=DAYS, events_per_user=EVENTS_PER_USER)
        marker.touch()
    return home


# ---------------------------------------------------------------------------------------
# synthetic tables


def _rand(salt: int, col: str = "id"):
    """A deterministic pseudo-random number in [0, 1) from a row id and a salt."""
    return (F.abs(F.xxhash64(F.col(col), F.lit(salt))) % F.lit(1_000_003)) / F.lit(1_000_003.0)


def _user_id(idx):
    return F.concat(F.lit("u"), F.lpad(idx.cast("string"), 7, "0"))


def _events(spark, users: int, days: int, n_events: int, s: int, start: dt.date, created):
    """bronze.events rows: skewed activity (a few users make many events), a Taobao-like
    type mix, 40 categories with a long tail."""
    ts0 = dt.datetime.combine(start, dt.time())
    r_user, r_day = _rand(s + 1), _rand(s + 2)
    ev = spark.range(n_events).select(
        "id",
        F.floor(r_user * r_user * users).cast("long").alias("user_idx"),
        F.floor(r_day * days).cast("int").alias("day"),
        _rand(s + 3).alias("r_ts"),
        _rand(s + 4).alias("r_type"),
        _rand(s + 5).alias("r_cat"),
        _rand(s + 6).alias("r_item"),
        _rand(s + 7).alias("r_price"),
    )
    event_type = (
        F.when(F.col("r_type") < 0.70, "view").when(F.col("r_type") < 0.80, "click")
        .when(F.col("r_type") < 0.86, "search").when(F.col("r_type") < 0.93, "cart")
        .when(F.col("r_type") < 0.96, "fav").otherwise("purchase")
    )
    return ev.select(
        F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"),
        _user_id(F.col("user_idx")).alias("user_id"),
        F.concat(F.lit("i"), F.floor(F.col("r_item") * 5000).cast("string")).alias("item_id"),
        F.concat(F.lit("c"), F.floor(F.pow(F.col("r_cat"), 1.5) * 40).cast("string")).alias("category_id"),
        event_type.alias("event_type"),
        (F.lit(ts0).cast("timestamp") + F.make_dt_interval(
            F.col("day"), F.lit(0), F.lit(0), F.col("r_ts") * 86399)).alias("event_ts"),
        F.date_add(F.lit(start), F.col("day")).alias("event_date"),
        F.round(1 + F.col("r_price") * 99, 2).alias("price"),
        F.when(event_type == "purchase", 1 + F.floor(F.col("r_price") * 3)).cast("int").alias("quantity"),
        F.concat_ws("-", _user_id(F.col("user_idx")), F.col("day").cast("string"),
                    F.floor(F.col("r_ts") * 3).cast("string")).alias("session_id"),
        F.when(event_type == "search", F.lit("shoes")).alias("query"),
        F.lit(None).cast("string").alias("brand"),
        F.lit("synthetic").alias("source"),
        created.alias("ingested_at"),
    )


def _behaviour(spark, users: int, days: int, s: int, start: dt.date, created):
    """silver.user_behaviour rows, not derived from the events; later days are busier
    (drift to measure)."""
    ts0 = dt.datetime.combine(start, dt.time())
    ub = spark.range(users * days).select(
        (F.col("id") % users).alias("user_idx"),
        (F.col("id") / users).cast("int").alias("day"),
        *[_rand(s + 40 + k).alias(f"r{k}") for k in range(8)],
        *[_rand(s + 20 + k).alias(f"rc{k}") for k in range(5)],
    )
    # coalesce: non-null elements, so the array type matches the schema (containsNull=false).
    cats = [F.coalesce(F.concat(F.lit("c"), F.floor(F.pow(F.col(f"rc{k}"), 1.5) * 40).cast("string")), F.lit("c0"))
            for k in range(5)]
    shift = 1.0 + 0.15 * F.col("day")
    views = F.floor(F.pow(F.col("r0"), 3) * 300 * shift).cast("long")
    carts = F.floor(F.col("r1") * 0.2 * views).cast("long")
    buys = F.floor(F.col("r2") * carts).cast("long")
    sessions = F.floor(views / 8) + 1
    return ub.select(
        _user_id(F.col("user_idx")).alias("user_id"),
        F.date_add(F.lit(start), F.col("day")).alias("as_of_date"),
        (F.lit(ts0).cast("timestamp") + F.make_dt_interval(F.col("day") + 1)).alias("event_timestamp"),
        created.alias("created_timestamp"),
        F.floor(views / 20).alias("views_1d"), F.floor(views / 4).alias("views_7d"), views.alias("views_30d"),
        F.floor(views / 10).alias("clicks_7d"), F.floor(views / 30).alias("searches_7d"),
        F.floor(carts / 4).alias("carts_7d"), carts.alias("carts_30d"),
        F.floor(carts / 8).alias("favs_7d"), F.floor(carts / 2).alias("favs_30d"),
        F.floor(buys / 4).alias("purchases_7d"), buys.alias("purchases_30d"),
        F.floor(views * 0.6).alias("distinct_items_30d"),
        F.least(F.floor(views * 0.2), F.lit(40)).alias("distinct_categories_30d"),
        F.floor(views / 30).alias("distinct_queries_30d"),
        F.round(buys * (5 + F.col("r3") * 80), 2).alias("spend_30d"),
        F.when(buys > 0, F.round(5 + F.col("r3") * 80, 2)).alias("avg_purchase_price_30d"),
        F.when(views > 0, carts / views).alias("cart_rate_30d"),
        F.when(views > 0, buys / views).alias("purchase_rate_30d"),
        F.when(carts > 0, buys / carts).alias("cart_to_purchase_30d"),
        F.floor(F.col("r4") * 30).cast("int").alias("days_since_last_event"),
        F.when(buys > 0, F.floor(F.col("r4") * 30)).cast("int").alias("days_since_last_purchase"),
        F.least(F.floor(views / 5) + 1, F.lit(30)).alias("active_days_30d"),
        sessions.alias("sessions_30d"),
        F.when(views > 0, F.round(views / sessions, 3)).alias("avg_session_events_30d"),
        F.when(views > 0, F.round(F.col("r5") * 0.5, 3)).alias("night_share_30d"),
        # Elements never null (the schema says so); users without views get [].
        F.array_distinct(F.slice(F.array(*cats), 1, F.when(views > 0, F.floor(F.col("r6") * 5).cast("int") + 1)
                                 .otherwise(0))).alias("top_categories_30d"),
        F.when(views > 0, F.round(0.2 + F.col("r6") * 0.8, 3)).alias("top_category_share_30d"),
        F.when(views > 0, F.round(F.col("r7"), 3)).alias("top_brand_share_30d"),
    )


def _profiles(spark, users: int, days: int, s: int, start: dt.date, created):
    """gold.user_profiles rows: an 8-d vector and six skewed segments."""
    ts0 = dt.datetime.combine(start, dt.time())
    up = spark.range(users * days).select(
        (F.col("id") % users).alias("user_idx"),
        (F.col("id") / users).cast("int").alias("day"),
        _rand(s + 60).alias("r_seg"),
        *[_rand(s + 70 + k).alias(f"rv{k}") for k in range(8)],
    )
    return up.select(
        _user_id(F.col("user_idx")).alias("user_id"),
        F.date_add(F.lit(start), F.col("day")).alias("as_of_date"),
        (F.lit(ts0).cast("timestamp") + F.make_dt_interval(F.col("day") + 1)).alias("event_timestamp"),
        created.alias("created_timestamp"),
        F.array(*[F.coalesce((F.col(f"rv{k}") * 2 - 1).cast("float"), F.lit(0.0).cast("float"))
                  for k in range(8)]).alias("profile_vec"),
        F.floor(F.col("r_seg") * F.col("r_seg") * 6).cast("int").alias("segment_id"),
        F.lit("fusion-v1").alias("fusion_version"),
        F.lit("encoder-v1").alias("encoder_version"),
    )


def write_synthetic_tables(spark, settings, users: int, days: int, events_per_user: float = 8.0,
                           seed: int = 1, start: dt.date = START) -> dict[str, int]:
    """Write bronze.events, silver.user_behaviour and gold.user_profiles for ``users``
    users over ``days`` days (overwriting). Returns the row count of each table.

    Values are pseudo-random but deterministic in (users, days, seed); the behaviour and
    profile rows are not derived from the events (the views only need valid schemas),
    but their distributions shift from day to day so drift has something to measure.
    """
    s = seed * 100
    created = F.lit(dt.datetime(2024, 6, 1)).cast("timestamp")
    n_events = int(users * events_per_user)
    counts = {}
    # About one file per partition per ~1M rows: what a daily job would leave behind.
    for name, df, schema, part in (
        ("bronze.events", _events(spark, users, days, n_events, s, start, created), EVENTS, "event_date"),
        ("silver.user_behaviour", _behaviour(spark, users, days, s, start, created), USER_BEHAVIOUR, "as_of_date"),
        ("gold.user_profiles", _profiles(spark, users, days, s, start, created), USER_PROFILES, "as_of_date"),
    ):
        out = conform(df, schema)
        rows = n_events if name == "bronze.events" else users * days
        per_part = max(1, rows // days // 1_000_000 + 1)
        out = out.repartition(days * per_part, part, (F.rand(seed) * per_part).cast("int")) if per_part > 1 \
            else out.repartition(part)
        (out.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
         .partitionBy(part).save(settings.table(name)))
        counts[name] = rows
    return counts


def normalize(value):
    if isinstance(value, str):
        if value[:1] in "[{" and value[-1:] in "]}":
            try:
                return normalize(json.loads(value))
            except ValueError:
                return value
        if _DATE.match(value):
            return dt.date.fromisoformat(value)
        return value
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "__float__") and not isinstance(value, (dt.date, dt.datetime)):
        return float(value)  # Decimal, numpy
    return value


def _key(row) -> str:
    """Sort key from the non-float cells (the grain's keys are among them)."""
    return repr([v for v in row if not isinstance(v, float)])


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_rows(left, right, what: str) -> None:
    lrows = sorted(([normalize(v) for v in r] for r in left), key=_key)
    rrows = sorted(([normalize(v) for v in r] for r in right), key=_key)
    assert len(lrows) == len(rrows), f"{what}: {len(lrows)} rows vs {len(rrows)}"
    for a, b in zip(lrows, rrows):
        assert len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b)), f"{what}:\n{a}\n!=\n{b}"
