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

from tests.support.sql_data import write_synthetic_tables

RESULTS = Path(__file__).resolve().parent / "results" / "sql.json"


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
