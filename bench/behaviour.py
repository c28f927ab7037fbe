"""Behaviour job benchmark: a full 30-day backfill and a one-day refresh, Spark beside
DuckDB computing the same features from the same files.

    python -m bench.behaviour [--quick]   -> bench/results/behaviour.json

Data: the project's generator, 60 days of events (5M and 20M; --quick: 0.3M), written
once to a bronze Delta table under .cache/bench/ (reused by later runs). The full build
computes the 30 as-of days of the last 30 days (its windows read all 60 days); the
incremental build computes the last day alone (its windows read 30 partitions).

- ``spark_full_s``: the job as ``persona backfill`` runs it (without sequences), from
  scratch: the daily partials of all 60 days in one pass (written to a
  ``silver.user_daily`` Delta table), then the 30 as-of days rolled up from them and
  written with replaceWhere;
- ``spark_incremental_s``: the job as ``persona build`` runs it (without sequences):
  the staleness check of the 30 partials (one narrow bronze scan), the last day's
  partial from its one bronze partition, the roll-up of that one as-of day from 30
  stored partials, written;
- ``duckdb_full_s``: DuckDB (all cores) running the straightforward SQL a user would
  write (each as-of day joined to its 30-day window, exact distinct counts; the same
  SQL is the oracle of tests/integration/test_behaviour_oracle.py) over the Parquet
  files of the same Delta table, into a table;
- ``ratio_spark_to_duckdb`` = duckdb_full_s / spark_full_s (>1: Spark faster);
- ``incremental_to_full_ratio`` = spark_incremental_s / spark_full_s;
- ``spark_sequences_full_s``: the sequences job for the same 30 days (not in the ratio).
Timings: best of two warm runs (the machine is shared; noise only adds time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import shutil
import sys
import time

from bench.common import CACHE_DIR, RESULTS_DIR, print_table, timed, write_results

START = dt.date(2024, 1, 1)
DAYS = 60
EVENTS_PER_USER_DAY = 10  # the generator's average (heavy-tailed)


def duckdb_behaviour_sql(source: str, days: str, settings) -> str:
    """DuckDB SQL computing silver.user_behaviour's columns for every as-of day in the
    relation ``days`` (column ``as_of``) from the events relation ``source``, straight
    from the definitions in docs/features.md (no partial aggregates, no tricks)."""
    b = settings.behaviour
    weights = " ".join(f"WHEN '{t}' THEN {float(w)}" for t, w in b.category_weights.items())
    gap_us = b.session_gap_minutes * 60 * 1_000_000
    return f"""
    WITH e AS (
      SELECT *, CAST(event_ts AS DATE) AS d, epoch_us(event_ts) AS us,
             CASE event_type {weights} ELSE 0.0 END AS w
      FROM {source}),
    -- sessions over the whole log: source id, else a new session after an idle gap
    g AS (
      SELECT *, lag(us) OVER (PARTITION BY user_id ORDER BY us, event_id) AS prev_us
      FROM e WHERE session_id IS NULL),
    gs AS (
      SELECT event_id, 'g' || CAST(sum(CASE WHEN prev_us IS NULL OR us - prev_us > {gap_us} THEN 1 ELSE 0 END)
             OVER (PARTITION BY user_id ORDER BY us, event_id) AS VARCHAR) AS gkey
      FROM g),
    es AS (
      SELECT e.*, coalesce('s' || e.session_id, gs.gkey) AS skey FROM e LEFT JOIN gs USING (event_id)),
    w AS (
      SELECT CAST(days.as_of AS DATE) AS as_of, es.* FROM {days} AS days
      JOIN es ON es.d BETWEEN CAST(days.as_of AS DATE) - 29 AND CAST(days.as_of AS DATE)),
    base AS (
      SELECT user_id, as_of,
        max(ingested_at) AS created_timestamp,
        count(*) FILTER (event_type = 'view' AND d = as_of) AS views_1d,
        count(*) FILTER (event_type = 'view' AND d > as_of - 7) AS views_7d,
        count(*) FILTER (event_type = 'view') AS views_30d,
        count(*) FILTER (event_type = 'click' AND d > as_of - 7) AS clicks_7d,
        count(*) FILTER (event_type = 'search' AND d > as_of - 7) AS searches_7d,
        count(*) FILTER (event_type = 'cart' AND d > as_of - 7) AS carts_7d,
        count(*) FILTER (event_type = 'cart') AS carts_30d,
        count(*) FILTER (event_type = 'fav' AND d > as_of - 7) AS favs_7d,
        count(*) FILTER (event_type = 'fav') AS favs_30d,
        count(*) FILTER (event_type = 'purchase' AND d > as_of - 7) AS purchases_7d,
        count(*) FILTER (event_type = 'purchase') AS purchases_30d,
        count(DISTINCT item_id) AS distinct_items_30d,
        count(DISTINCT category_id) AS distinct_categories_30d,
        count(DISTINCT query) AS distinct_queries_30d,
        coalesce(sum(price * coalesce(quantity, 1)) FILTER (event_type = 'purchase'), 0.0) AS spend_30d,
        avg(price) FILTER (event_type = 'purchase') AS avg_purchase_price_30d,
        CAST(as_of - max(d) AS INTEGER) AS days_since_last_event,
        CAST(as_of - max(d) FILTER (event_type = 'purchase') AS INTEGER) AS days_since_last_purchase,
        count(DISTINCT d) AS active_days_30d,
        count(DISTINCT skey) AS sessions_30d,
        count(*) AS n,
        count(*) FILTER (hour(event_ts) >= {b.night_start_hour} AND hour(event_ts) < {b.night_end_hour}) AS night
      FROM w GROUP BY user_id, as_of),
    cs AS (SELECT user_id, as_of, category_id, sum(w) AS score FROM w
           WHERE category_id IS NOT NULL GROUP BY ALL),
    ct AS (SELECT user_id, as_of,
             list(category_id ORDER BY score DESC, category_id) FILTER (score > 0) AS cats,
             sum(score) AS total, max(score) AS top FROM cs GROUP BY ALL),
    bs AS (SELECT user_id, as_of, brand, sum(w) AS score FROM w WHERE brand IS NOT NULL GROUP BY ALL),
    bt AS (SELECT user_id, as_of, sum(score) AS total, max(score) AS top FROM bs GROUP BY ALL)
    SELECT base.*,
      CASE WHEN views_30d > 0 THEN carts_30d / views_30d END AS cart_rate_30d,
      CASE WHEN views_30d > 0 THEN purchases_30d / views_30d END AS purchase_rate_30d,
      CASE WHEN carts_30d > 0 THEN purchases_30d / carts_30d END AS cart_to_purchase_30d,
      n / sessions_30d AS avg_session_events_30d,
      night / n AS night_share_30d,
      coalesce(ct.cats[1:3], []) AS top_categories_30d,
      CASE WHEN ct.total > 0 THEN ct.top / ct.total END AS top_category_share_30d,
      CASE WHEN bt.total > 0 THEN bt.top / bt.total END AS top_brand_share_30d,
      CAST(base.as_of AS TIMESTAMP) + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND AS event_timestamp
    FROM base LEFT JOIN ct USING (user_id, as_of) LEFT JOIN bt USING (user_id, as_of)
    """


def _bronze(spark, settings, n_events: int) -> str:
    """A cached bronze Delta table of about n_events generated events; returns its path."""
    from pyspark.sql import functions as F

    from persona.demo.generator import generate
    from spark_jobs.schemas import EVENTS, conform

    users = max(10, n_events // (DAYS * EVENTS_PER_USER_DAY))
    path = CACHE_DIR / f"behaviour-{users}u-{DAYS}d" / "bronze"
    if (path / "_delta_log").is_dir():
        return str(path)
    raw = path.parent / "raw"
    print(f"generating {users:,} users x {DAYS} days ...", file=sys.stderr, flush=True)
    generate(users=users, days=DAYS, seed=42, start=START).write(raw, "parquet")
    df = spark.read.parquet(str(raw / "events"))
    df = (df.withColumn("event_date", F.to_date("event_ts")).withColumn("source", F.lit("bench"))
          .withColumn("ingested_at", F.lit(dt.datetime(2024, 3, 1))))
    shutil.rmtree(path, ignore_errors=True)
    conform(df, EVENTS).write.format("delta").partitionBy("event_date").save(str(path))
    shutil.rmtree(raw, ignore_errors=True)
    return str(path)


def _duckdb_memory_limit(settings) -> str:
    """RAM minus the Spark driver's heap minus 6 GiB of headroom (JVM off-heap, Python,
    DuckDB's allocations outside its limit)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    text = str(settings.spark.driver_memory).strip().lower()
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    heap = int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)
    return f"{max(2 * 2**30, total - heap - 6 * 2**30) // 2**20}MB"


def _run_size(spark, settings, n_events: int, repeat: int) -> dict:
    import duckdb
    import pandas as pd
    from pyspark.sql import functions as F

    from spark_jobs import delta_io
    from spark_jobs.silver import behaviour, partials
    from spark_jobs.schemas import USER_BEHAVIOUR
    from spark_jobs.silver.sequences import user_sequences

    path = _bronze(spark, settings, n_events)
    bronze = spark.read.format("delta").load(path)
    n = bronze.count()
    end = START + dt.timedelta(days=DAYS - 1)
    start = end - dt.timedelta(days=29)
    params = partials.BehaviourParams.from_settings(settings)
    out = str(CACHE_DIR / "out" / "user_behaviour")
    daily = str(CACHE_DIR / "out" / "user_daily")
    shutil.rmtree(out, ignore_errors=True)

    def spark_full(a, b):
        shutil.rmtree(daily, ignore_errors=True)  # a backfill from scratch: every partial
        behaviour.refresh_range(spark, bronze, daily, out, a, b, params, events_path=path)

    def spark_refresh(d):
        behaviour.refresh_range(spark, bronze, daily, out, d, d, params, always={d}, events_path=path)

    def spark_seq(a, b):
        user_sequences(bronze, a, b, settings.behaviour.sequence_length).write.format("noop").mode("overwrite").save()

    cold, _ = timed(lambda: spark_full(start, end))
    full = min(timed(lambda: spark_full(start, end))[0] for _ in range(repeat))
    inc = min(timed(lambda: spark_refresh(end))[0] for _ in range(repeat))
    seq = timed(lambda: spark_seq(start, end))[0]
    rows = spark.read.format("delta").load(out).where(F.col("as_of_date").between(start, end)).count()
    plan = partials.daily_partials(bronze, end, end, params)._jdf.queryExecution().executedPlan().toString()
    pruning = sorted({line.split("PartitionFilters: ")[1].split("]")[0] + "]"
                      for line in plan.splitlines() if "PartitionFilters: " in line})

    files = [f for f in glob.glob(f"{path}/event_date=*/*.parquet")]
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"SET temp_directory='{CACHE_DIR / 'duckdb-tmp'}'")
    # DuckDB defaults to 80% of RAM, but the Spark driver JVM of this same run holds its
    # heap too: at 20M events DuckDB's window join grew to 17 GB and the kernel killed
    # the run. Cap it to what the JVM leaves (it spills to temp_directory beyond that).
    con.execute(f"SET memory_limit='{_duckdb_memory_limit(settings)}'")
    con.execute("SET preserve_insertion_order=false")
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW ev AS SELECT * FROM read_parquet([{listed}], hive_partitioning=true)")
    days = pd.DataFrame({"as_of": pd.to_datetime([start + dt.timedelta(days=i) for i in range(30)])})
    con.register("days_full", days)
    con.register("days_one", days.tail(1))

    def duck(days_rel):
        con.execute("DROP TABLE IF EXISTS res")
        con.execute("CREATE TABLE res AS " + duckdb_behaviour_sql("ev", days_rel, settings))

    d_full = min(timed(lambda: duck("days_full"))[0] for _ in range(repeat))
    d_rows = con.execute("SELECT count(*) FROM res").fetchall()[0][0]
    d_inc = min(timed(lambda: duck("days_one"))[0] for _ in range(repeat))
    return {
        "events": n,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "as_of_days": 30,
        "rows": rows,
        "duckdb_rows": d_rows,
        "spark_full_cold_s": round(cold, 3),
        "spark_full_s": round(full, 3),
        "spark_incremental_s": round(inc, 3),
        "spark_sequences_full_s": round(seq, 3),
        "duckdb_full_s": round(d_full, 3),
        "duckdb_incremental_s": round(d_inc, 3),
        "spark_events_per_s": round(n / full),
        "duckdb_events_per_s": round(n / d_full),
        "ratio_spark_to_duckdb": round(d_full / full, 3),
        "incremental_to_full_ratio": round(inc / full, 3),
        "incremental_partition_filters": pruning,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small size (a couple of minutes)")
    ap.add_argument("--sizes", default="", help="comma-separated event counts (default 5000000,20000000)")
    ap.add_argument("--repeat", type=int, default=0, help="warm runs per size, best kept (default 2; quick 1)")
    args = ap.parse_args(argv)

    from core.settings import load_settings
    from spark_jobs.session import get_spark

    settings = load_settings(home=CACHE_DIR / "home")
    spark = get_spark(settings)
    sizes = [300_000] if args.quick else [5_000_000, 20_000_000]
    if args.sizes:
        sizes = [int(x.replace("_", "")) for x in args.sizes.split(",")]
    repeat = args.repeat or (1 if args.quick else 2)
    results = {}
    previous = RESULTS_DIR / "behaviour.json"
    if args.sizes and previous.is_file():
        # One size at a time (20M takes most of an hour): keep the sizes measured before,
        # each with its own load figures, unless this run measures them again.
        try:
            old = json.loads(previous.read_text())
            if not old.get("quick"):
                results.update({k: {**v, "recorded_at": v.get("recorded_at", old.get("recorded_at"))}
                                for k, v in old.get("sizes", {}).items()})
        except ValueError:
            pass
    for size in sizes:
        t0 = time.perf_counter()
        results[str(size)] = {**_run_size(spark, settings, size, repeat=repeat),
                              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        print(f"size {size:,} done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        # Recorded after every size, so a run cut short still leaves what it measured.
        write_results("behaviour", {"quick": args.quick, "complete": False, "sizes": results,
                                    "spark_master": settings.spark.master,
                                    "shuffle_partitions": settings.spark.shuffle_partitions})
    header = ["events", "spark 30d s", "duckdb 30d s", "spark ev/s", "duckdb ev/s", "ratio s/d",
              "spark 1d s", "inc/full", "seq 30d s"]
    rows = [[r["events"], r["spark_full_s"], r["duckdb_full_s"], r["spark_events_per_s"], r["duckdb_events_per_s"],
             r["ratio_spark_to_duckdb"], r["spark_incremental_s"], r["incremental_to_full_ratio"],
             r["spark_sequences_full_s"]] for r in results.values()]
    print_table("behaviour: 30-day backfill and one-day refresh (Spark local vs DuckDB, same files)", header, rows)
    path = write_results("behaviour", {"quick": args.quick, "complete": True, "sizes": results,
                                       "spark_master": settings.spark.master,
                                       "shuffle_partitions": settings.spark.shuffle_partitions})
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
