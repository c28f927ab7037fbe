"""Serving benchmark (placeholder header; the full docstring is below the data builder)."""

from __future__ import annotations

import datetime as dt


# ---- synthetic tables (conform to spark_jobs.schemas) --------------------------------
def synth_tables(spark, settings, users: int, days: int, end_date: dt.date, emb_dim: int = 32,
                 profile_dim: int = 16, seed: int = 7) -> dict:
    """Write users x days snapshots of the three serving tables as Delta under ``settings``.

    Values are pseudo-random but deterministic per (user, day); every column of the
    contract schemas is filled (a few nullable ones are sometimes null).
    """
    from pyspark.sql import functions as F

    from spark_jobs.delta_io import replace_where
    from spark_jobs.schemas import USER_BEHAVIOUR, USER_EMBEDDINGS, USER_PROFILES

    start = end_date - dt.timedelta(days=days - 1)
    base = (
        spark.range(users).withColumnRenamed("id", "uid")
        .crossJoin(spark.range(days).withColumnRenamed("id", "d"))
        .withColumn("user_id", F.format_string("u%07d", "uid"))
        .withColumn("as_of_date", F.date_add(F.lit(start), F.col("d").cast("int")))
        .withColumn("event_timestamp", F.expr(
            "cast(as_of_date as timestamp) + interval 1 day - interval 1 microsecond"))
        .withColumn("created_timestamp", F.expr("event_timestamp + interval 2 hours"))
    )

    def r(i: int):  # a deterministic uniform [0,1) per row and column
        return F.rand(seed * 1000 + i)

    counts = ["views_1d", "views_7d", "views_30d", "clicks_7d", "searches_7d", "carts_7d",
              "carts_30d", "favs_7d", "favs_30d", "purchases_7d", "purchases_30d",
              "distinct_items_30d", "distinct_categories_30d", "distinct_queries_30d",
              "active_days_30d", "sessions_30d"]
    beh = base
    for i, c in enumerate(counts):
        beh = beh.withColumn(c, (r(i) * (50 + 10 * i)).cast("long"))
    dbl = ["spend_30d", "avg_purchase_price_30d", "cart_rate_30d", "purchase_rate_30d",
           "cart_to_purchase_30d", "avg_session_events_30d", "night_share_30d",
           "top_category_share_30d", "top_brand_share_30d"]
    for i, c in enumerate(dbl):
        col = r(100 + i) * (500.0 if c == "spend_30d" else 1.0)
        if c in ("avg_purchase_price_30d", "cart_to_purchase_30d"):
            col = F.when(r(200 + i) < 0.2, F.lit(None)).otherwise(col)
        beh = beh.withColumn(c, col)
    beh = (
        beh.withColumn("days_since_last_event", (r(300) * 30).cast("int"))
        .withColumn("days_since_last_purchase",
                    F.when(r(301) < 0.3, F.lit(None)).otherwise((r(302) * 90).cast("int")))
        .withColumn("top_categories_30d", F.slice(F.array(
            *[F.format_string("c%d", (r(310 + k) * 500).cast("int")) for k in range(3)]),
            1, (r(313) * 4).cast("int")))
    )
    emb = base.withColumn("user_emb", F.array(*[(r(400 + k) * 2 - 1).cast("float") for k in range(emb_dim)])) \
        .withColumn("encoder_version", F.lit("enc-v1"))
    prof = base.withColumn("profile_vec", F.array(*[(r(500 + k) * 6 - 3).cast("float") for k in range(profile_dim)])) \
        .withColumn("segment_id", (r(550) * 6).cast("int")) \
        .withColumn("fusion_version", F.lit("fuse-v1")).withColumn("encoder_version", F.lit("enc-v1"))
    out = {}
    for name, df, schema in (("silver.user_behaviour", beh, USER_BEHAVIOUR),
                             ("gold.user_embeddings", emb, USER_EMBEDDINGS),
                             ("gold.user_profiles", prof, USER_PROFILES)):
        path = settings.table(name)
        replace_where(df, path, schema, "as_of_date", start, end_date)
        out[name] = path
    return out
