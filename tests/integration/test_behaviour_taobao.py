"""On the real Taobao slice (../shared/data, skipped when absent): a build as of
2017-11-26 gives per-user counts equal to a hand-written DuckDB query over the CSV.

Bronze is written straight from the CSV here (pv -> view, buy -> purchase, Unix
seconds -> UTC), so this checks the behaviour job, not the ingest adapters.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from pyspark.sql import functions as F

from spark_jobs.silver import behaviour
from spark_jobs.schemas import EVENTS, conform

pytestmark = pytest.mark.integration

AS_OF = dt.date(2017, 11, 26)


def test_taobao_counts_match_duckdb(spark, module_settings, shared_data):
    csv = shared_data / "taobao_userbehavior_slice.csv"
    if not csv.is_file():
        pytest.skip(f"{csv} not present")
    raw = spark.read.csv(str(csv), schema="user_id string, item_id string, category_id string, "
                                          "behavior_type string, ts long")
    etype = F.when(F.col("behavior_type") == "pv", "view").when(F.col("behavior_type") == "buy", "purchase") \
        .otherwise(F.col("behavior_type"))
    events = raw.select(
        F.concat_ws("-", "user_id", "item_id", "behavior_type", "ts", F.monotonically_increasing_id()).alias("event_id"),
        "user_id", "item_id", "category_id", etype.alias("event_type"),
        F.timestamp_seconds("ts").alias("event_ts"),
        F.to_date(F.timestamp_seconds("ts")).alias("event_date"),
        *[F.lit(None).alias(c) for c in ("price", "quantity", "session_id", "query", "brand")],
        F.lit("taobao").alias("source"), F.lit(dt.datetime(2024, 1, 1)).alias("ingested_at"),
    )
    conform(events, EVENTS).write.format("delta").mode("overwrite").partitionBy("event_date").save(
        module_settings.table("bronze.events"))
    assert behaviour.latest_complete_day(spark, module_settings) == AS_OF
    summary = behaviour.run_build(spark, module_settings)  # default: the latest complete day
    assert summary["as_of"] == AS_OF.isoformat()

    got = {r["user_id"]: r for r in spark.read.format("delta").load(module_settings.table("silver.user_behaviour"))
           .where(F.col("as_of_date") == F.lit(AS_OF)).collect()}
    want = duckdb.sql(f"""
        SELECT CAST(column0 AS VARCHAR) AS user_id,
               count(*) FILTER (column3 = 'pv') AS views,
               count(*) FILTER (column3 = 'cart') AS carts,
               count(*) FILTER (column3 = 'fav') AS favs,
               count(*) FILTER (column3 = 'buy') AS buys,
               count(DISTINCT column1) AS items,
               count(DISTINCT column2) AS cats
        FROM read_csv('{csv}', header = false, columns = {{
            'column0': 'VARCHAR', 'column1': 'VARCHAR', 'column2': 'VARCHAR', 'column3': 'VARCHAR', 'column4': 'BIGINT'}})
        WHERE CAST(to_timestamp(column4) AT TIME ZONE 'UTC' AS DATE) = DATE '{AS_OF}'
        GROUP BY 1""").fetchall()
    assert len(got) == len(want) == 66_454
    for user, views, carts, favs, buys, items, cats in want:
        r = got[user]
        assert (r["views_1d"], r["views_30d"], r["carts_30d"], r["favs_30d"], r["purchases_30d"]) == (
            views, views, carts, favs, buys), user
        assert (r["distinct_items_30d"], r["distinct_categories_30d"]) == (items, cats), user
    assert sum(r["purchases_30d"] for r in got.values()) == 2_493
