"""Benchmark: latency of every curated view, embedded DuckDB vs the Spark Thrift server.

Input: synthetic Delta tables conforming to spark_jobs.schemas (bronze.events,
silver.user_behaviour, gold.user_profiles) for N users over D days, written with Spark
into a scratch home (``--home``, default a temp dir; kept with ``--keep``).
Output: a table on stdout and ``bench/results/sql.json``: per view, the median latency
of ``select * from <view>`` fully fetched through SQLAlchemy on
  - embedded: persona's read-only DuckDB engine (views over delta-rs file lists),
  - thrift: ``persona sql-server`` (Spark Thrift server, local[2]) through PyHive,
  - duckdb_parquet: the reference a user would write by hand - plain DuckDB over the
    same Parquet files (read_parquet globs, no Delta log, no guard, no SQLAlchemy).
Grain of the results: one row per view.

    python -m bench.sql            # 1M users x 2 days of profiles and behaviour
    python -m bench.sql --quick    # 50k users
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sql.json"
START = dt.date(2024, 3, 4)  # a Monday: cohorts start on week boundaries


# ---------------------------------------------------------------------------------------
# synthetic tables (also used by tests/integration/test_sql*.py)


def _rand(salt: int, col: str = "id"):
    """A deterministic pseudo-random number in [0, 1) from a row id and a salt."""
    from pyspark.sql import functions as F

    return (F.abs(F.xxhash64(F.col(col), F.lit(salt))) % F.lit(1_000_003)) / F.lit(1_000_003.0)


def write_synthetic_tables(spark, settings, users: int, days: int, events_per_user: float = 8.0,
                           seed: int = 1, start: dt.date = START) -> dict[str, int]:
    """Write bronze.events, silver.user_behaviour and gold.user_profiles for ``users``
    users over ``days`` days (overwriting). Returns the row count of each table.

    Values are pseudo-random but deterministic in (users, days, seed); the behaviour and
    profile rows are not derived from the events (the views only need valid schemas),
    but their distributions shift from day to day so drift has something to measure.
    """
    from pyspark.sql import functions as F

    from spark_jobs.schemas import EVENTS, USER_BEHAVIOUR, USER_PROFILES, conform

    s = seed * 100
    ts0 = dt.datetime.combine(start, dt.time())
    created = F.lit(dt.datetime(2024, 6, 1)).cast("timestamp")
    user_id = lambda idx: F.concat(F.lit("u"), F.lpad(idx.cast("string"), 7, "0"))  # noqa: E731

    n_events = int(users * events_per_user)
    r_user, r_day = _rand(s + 1), _rand(s + 2)
    ev = spark.range(n_events).select(
        "id",
        # Skewed activity: a few users make many events.
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
    events = ev.select(
        F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"),
        user_id(F.col("user_idx")).alias("user_id"),
        F.concat(F.lit("i"), F.floor(F.col("r_item") * 5000).cast("string")).alias("item_id"),
        F.concat(F.lit("c"), F.floor(F.pow(F.col("r_cat"), 1.5) * 40).cast("string")).alias("category_id"),
        event_type.alias("event_type"),
        (F.lit(ts0).cast("timestamp") + F.make_dt_interval(
            F.col("day"), F.lit(0), F.lit(0), F.col("r_ts") * 86399)).alias("event_ts"),
        F.date_add(F.lit(start), F.col("day")).alias("event_date"),
        F.round(1 + F.col("r_price") * 99, 2).alias("price"),
        F.when(event_type == "purchase", 1 + F.floor(F.col("r_price") * 3)).cast("int").alias("quantity"),
        F.concat_ws("-", user_id(F.col("user_idx")), F.col("day").cast("string"),
                    F.floor(F.col("r_ts") * 3).cast("string")).alias("session_id"),
        F.when(event_type == "search", F.lit("shoes")).alias("query"),
        F.lit(None).cast("string").alias("brand"),
        F.lit("synthetic").alias("source"),
        created.alias("ingested_at"),
    )

    ub = spark.range(users * days).select(
        (F.col("id") % users).alias("user_idx"),
        (F.col("id") / users).cast("int").alias("day"),
        *[_rand(s + 40 + k).alias(f"r{k}") for k in range(8)],
        *[_rand(s + 20 + k).alias(f"rc{k}") for k in range(5)],
    )
    # coalesce: non-null elements, so the array type matches the schema (containsNull=false).
    cats = [F.coalesce(F.concat(F.lit("c"), F.floor(F.pow(F.col(f"rc{k}"), 1.5) * 40).cast("string")), F.lit("c0"))
            for k in range(5)]
    shift = 1.0 + 0.15 * F.col("day")  # later days are busier: drift
    views_30d = F.floor(F.pow(F.col("r0"), 3) * 300 * shift).cast("long")
    carts_30d = F.floor(F.col("r1") * 0.2 * views_30d).cast("long")
    purchases_30d = F.floor(F.col("r2") * carts_30d).cast("long")
    behaviour = ub.select(
        user_id(F.col("user_idx")).alias("user_id"),
        F.date_add(F.lit(start), F.col("day")).alias("as_of_date"),
        (F.lit(ts0).cast("timestamp") + F.make_dt_interval(F.col("day") + 1)).alias("event_timestamp"),
        created.alias("created_timestamp"),
        F.floor(views_30d / 20).alias("views_1d"),
        F.floor(views_30d / 4).alias("views_7d"),
        views_30d.alias("views_30d"),
        F.floor(views_30d / 10).alias("clicks_7d"),
        F.floor(views_30d / 30).alias("searches_7d"),
        F.floor(carts_30d / 4).alias("carts_7d"),
        carts_30d.alias("carts_30d"),
        F.floor(carts_30d / 8).alias("favs_7d"),
        F.floor(carts_30d / 2).alias("favs_30d"),
        F.floor(purchases_30d / 4).alias("purchases_7d"),
        purchases_30d.alias("purchases_30d"),
        F.floor(views_30d * 0.6).alias("distinct_items_30d"),
        F.least(F.floor(views_30d * 0.2), F.lit(40)).alias("distinct_categories_30d"),
        F.floor(views_30d / 30).alias("distinct_queries_30d"),
        F.round(purchases_30d * (5 + F.col("r3") * 80), 2).alias("spend_30d"),
        F.when(purchases_30d > 0, F.round(5 + F.col("r3") * 80, 2)).alias("avg_purchase_price_30d"),
        F.when(views_30d > 0, carts_30d / views_30d).alias("cart_rate_30d"),
        F.when(views_30d > 0, purchases_30d / views_30d).alias("purchase_rate_30d"),
        F.when(carts_30d > 0, purchases_30d / carts_30d).alias("cart_to_purchase_30d"),
        F.floor(F.col("r4") * 30).cast("int").alias("days_since_last_event"),
        F.when(purchases_30d > 0, F.floor(F.col("r4") * 30)).cast("int").alias("days_since_last_purchase"),
        F.least(F.floor(views_30d / 5) + 1, F.lit(30)).alias("active_days_30d"),
        (F.floor(views_30d / 8) + 1).alias("sessions_30d"),
        F.when(views_30d > 0, F.round(views_30d / (F.floor(views_30d / 8) + 1), 3)).alias("avg_session_events_30d"),
        F.when(views_30d > 0, F.round(F.col("r5") * 0.5, 3)).alias("night_share_30d"),
        # Elements never null (the schema says so); users without views get [].
        F.array_distinct(F.slice(F.array(*cats), 1, F.when(views_30d > 0, F.floor(F.col("r6") * 5).cast("int") + 1)
                                 .otherwise(0))).alias("top_categories_30d"),
        F.when(views_30d > 0, F.round(0.2 + F.col("r6") * 0.8, 3)).alias("top_category_share_30d"),
        F.when(views_30d > 0, F.round(F.col("r7"), 3)).alias("top_brand_share_30d"),
    )

    up = spark.range(users * days).select(
        (F.col("id") % users).alias("user_idx"),
        (F.col("id") / users).cast("int").alias("day"),
        _rand(s + 60).alias("r_seg"),
        *[_rand(s + 70 + k).alias(f"rv{k}") for k in range(8)],
    )
    profiles = up.select(
        user_id(F.col("user_idx")).alias("user_id"),
        F.date_add(F.lit(start), F.col("day")).alias("as_of_date"),
        (F.lit(ts0).cast("timestamp") + F.make_dt_interval(F.col("day") + 1)).alias("event_timestamp"),
        created.alias("created_timestamp"),
        F.array(*[F.coalesce((F.col(f"rv{k}") * 2 - 1).cast("float"), F.lit(0.0).cast("float")) for k in range(8)]).alias("profile_vec"),
        F.floor(F.col("r_seg") * F.col("r_seg") * 6).cast("int").alias("segment_id"),
        F.lit("fusion-v1").alias("fusion_version"),
        F.lit("encoder-v1").alias("encoder_version"),
    )

    counts = {}
    # About one file per partition per ~1M rows: what a daily job would leave behind.
    for name, df, schema, part in (
        ("bronze.events", events, EVENTS, "event_date"),
        ("silver.user_behaviour", behaviour, USER_BEHAVIOUR, "as_of_date"),
        ("gold.user_profiles", profiles, USER_PROFILES, "as_of_date"),
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


# ---------------------------------------------------------------------------------------
# the benchmark

# Per view, the query an analyst would run: aggregated views are read whole; per-user
# views are looked up by user, and also counted (which forces the full computation).
def _queries(views: list[str]) -> list[tuple[str, str, str, dict]]:
    per_user = {"user_profile_latest", "user_behaviour_daily"}
    out = []
    for v in views:
        if v in per_user:
            out.append((v, "lookup", f"select * from {v} where user_id = :u", {"u": "u0000042"}))
            out.append((v, "count", f"select count(*) as n from {v}", {}))
        else:
            out.append((v, "all rows", f"select * from {v}", {}))
    return out


def _time(fn, repeat: int, warmup: int) -> tuple[list[float], int]:
    rows = 0
    for _ in range(warmup):
        rows = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - t)
    return times, rows


def _reference_connection(settings, views):
    """Plain DuckDB over the tables' Parquet files by glob: what a user would write by
    hand (no Delta log, no read-only lock-down, no SQLAlchemy). Only correct on tables
    without removed-but-not-vacuumed files, which holds for freshly written ones."""
    import duckdb

    from persona.sql.catalogue import get_view

    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    for name in ("bronze.events", "silver.user_behaviour", "gold.user_profiles"):
        layer, table = name.split(".")
        con.execute(f"create schema if not exists {layer}")
        part = "event_date" if layer == "bronze" else "as_of_date"
        con.execute(
            f"create view {layer}.{table} as select * from read_parquet('{settings.table(name)}/*/*.parquet', "
            f"hive_partitioning = true, hive_types = {{'{part}': 'DATE'}})"
        )
    for v in views:
        con.execute(f"create view {v} as {get_view(v).translated('duckdb')}")
    return con


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k users, fewer repeats")
    parser.add_argument("--users", type=int, help="override the number of users")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--events-per-user", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, help="timed runs per query (default 5, quick 3)")
    parser.add_argument("--home", help="scratch persona home (tables are reused if already written)")
    parser.add_argument("--no-thrift", action="store_true", help="skip the Spark Thrift server")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    users = args.users or (50_000 if args.quick else 1_000_000)
    repeat = args.repeat or (3 if args.quick else 5)
    thrift_repeat = max(1, repeat // 2)
    own_home = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="persona-bench-sql-"))

    from persona.sql.catalogue import catalogue
    from persona.sql.embedded import embedded_engine
    from persona.sql.query import engine_for, run_query
    from persona.sql.thrift import free_port, start_thrift_server
    from core.settings import load_settings

    settings = load_settings(home=home, environ={
        "PERSONA__SPARK__MASTER": "local[2]",
        "PERSONA__SPARK__DRIVER_MEMORY": "4g",
        "PERSONA__SPARK__SHUFFLE_PARTITIONS": "8",
    })
    views = sorted(catalogue())
    info: dict = {
        "users": users, "days": args.days, "events_per_user": args.events_per_user,
        "repeat": repeat, "thrift_repeat": thrift_repeat, "cpus": os.cpu_count(),
        "platform": platform.platform(), "load_average_start": os.getloadavg(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        marker = home / f".bench-tables-{users}-{args.days}-{args.events_per_user}"
        if not marker.exists():
            from spark_jobs.session import get_spark

            spark = get_spark(settings)
            t = time.perf_counter()
            counts = write_synthetic_tables(spark, settings, users=users, days=args.days,
                                            events_per_user=args.events_per_user)
            info["write_tables_s"] = round(time.perf_counter() - t, 1)
            spark.stop()  # the Thrift server is another JVM: free this one's memory
            marker.write_text(json.dumps(counts))
        info["rows"] = json.loads(marker.read_text())
        print(f"tables: {info['rows']} under {home}", file=sys.stderr)

        results = {(v, shape): {"view": v, "query": shape} for v, shape, _, _ in _queries(views)}

        # embedded (includes building the DuckDB catalog once; reported separately)
        t = time.perf_counter()
        engine = embedded_engine(settings)
        info["embedded_catalog_build_s"] = round(time.perf_counter() - t, 3)
        for v, shape, sql, params in _queries(views):
            times, rows = _time(lambda: len(run_query(engine, sql, params).rows), repeat, 1)
            results[(v, shape)].update(rows=rows, embedded_s=statistics.median(times))
            print(f"embedded {v} {shape}: {statistics.median(times):.3f}s", file=sys.stderr)
        engine.dispose()

        # reference: plain DuckDB over the same Parquet files
        con = _reference_connection(settings, views)
        for v, shape, sql, params in _queries(views):
            duck_sql = sql.replace(":u", "$u")
            times, rows = _time(lambda: len(con.execute(duck_sql, params or None).fetchall()), repeat, 1)
            assert rows == results[(v, shape)]["rows"], (v, shape, rows)
            results[(v, shape)]["duckdb_parquet_s"] = statistics.median(times)
        con.close()

        if not args.no_thrift:
            t = time.perf_counter()
            server = start_thrift_server(settings, port=free_port(),
                                         workdir=home / "sql-server")
            info["thrift_start_s"] = round(time.perf_counter() - t, 1)
            try:
                hive = engine_for(settings, server.url)
                for v, shape, sql, params in _queries(views):
                    first = time.perf_counter()
                    rows = len(run_query(hive, sql, params).rows)
                    first = time.perf_counter() - first
                    times, rows = _time(lambda: len(run_query(hive, sql, params).rows), thrift_repeat, 0)
                    assert rows == results[(v, shape)]["rows"], (v, shape, rows)
                    results[(v, shape)].update(thrift_first_s=first, thrift_s=statistics.median(times))
                    print(f"thrift {v} {shape}: first {first:.2f}s, median {statistics.median(times):.2f}s",
                          file=sys.stderr)
                hive.dispose()
            finally:
                server.stop()
    finally:
        info["load_average_end"] = os.getloadavg()
        if own_home:
            shutil.rmtree(home, ignore_errors=True)

    rows = list(results.values())
    for r in rows:
        for k in [k for k in r if k.endswith("_s")]:
            r[k] = round(r[k], 4)
    _print(rows, info)
    out = {"benchmark": "sql", "quick": args.quick, **info, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _print(rows: list[dict], info: dict) -> None:
    head = f"{'view':22} {'query':8} {'rows':>8} {'embedded':>9} {'duckdb':>9} {'emb/duck':>8} {'thrift':>9} {'thr/emb':>8}"
    print(f"SQL views: {info['users']:,} users x {info['days']} days; "
          f"median seconds (thrift: after one warm-up run); 2 cores, load avg {info['load_average_start'][0]:.1f}")
    print(head)
    print("-" * len(head))
    for r in rows:
        thrift = r.get("thrift_s")
        emb_duck = r["embedded_s"] / max(r["duckdb_parquet_s"], 1e-9)
        thrift_cols = (f"{thrift:9.2f} {thrift / max(r['embedded_s'], 1e-9):8.1f}" if thrift is not None
                       else f"{'-':>9} {'-':>8}")
        print(f"{r['view']:22} {r['query']:8} {r['rows']:>8} {r['embedded_s']:>9.3f} "
              f"{r['duckdb_parquet_s']:>9.3f} {emb_duck:>8.2f} {thrift_cols}")
    extra = {k: info[k] for k in ("embedded_catalog_build_s", "thrift_start_s", "write_tables_s") if k in info}
    print("one-off costs (s):", extra)


if __name__ == "__main__":
    main()
