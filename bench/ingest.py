"""Ingest throughput: events/s into bronze.events (validation, ids, MERGE) beside DuckDB
converting the same CSV to Parquet on the same machine in the same run.

    python -m bench.ingest [--quick]   -> bench/results/ingest.json

Inputs: the real Taobao slice (../shared/data) repeated with shifted days to a few million
rows, and a generated log written as CSV. Spark session start is excluded; everything
else (parse, validate, dedupe, merge, quarantine) is timed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import print_table, write_results

REPO = Path(__file__).resolve().parent.parent
TAOBAO = REPO.parent / "shared" / "data" / "taobao_userbehavior_slice.csv"


def _taobao_repeated(out: Path, copies: int) -> int:
    """The slice ``copies`` times, each copy shifted by whole days (distinct events)."""
    lines = TAOBAO.read_text().splitlines()
    n = 0
    with out.open("w") as fh:
        for k in range(copies):
            shift = k * 86_400
            for ln in lines:
                u, i, c, b, ts = ln.split(",")
                fh.write(f"{u},{i},{c},{b},{int(ts) + shift}\n")
                n += 1
    return n


def _duckdb_csv_to_parquet(csv: Path, out: Path, header: bool) -> float:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    start = time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_csv('{csv}', header={str(header).lower()}, all_varchar=true)) "
        f"TO '{out}' (FORMAT parquet)"
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs (about a minute)")
    args = ap.parse_args(argv)

    from core.settings import load_settings
    from persona.demo.generator import generate
    from spark_jobs.bronze.ingest import run_ingest
    from spark_jobs.session import get_spark

    work = Path(tempfile.mkdtemp(prefix="persona-bench-ingest-"))
    rows = []
    try:
        settings = load_settings(home=work / "home")
        spark = get_spark(settings)
        inputs = []
        if TAOBAO.is_file():
            copies = 3 if args.quick else 20
            tb = work / "taobao.csv"
            n = _taobao_repeated(tb, copies)
            inputs.append(("taobao slice x%d" % copies, tb, "taobao", n, False))
        users = 2_000 if args.quick else 20_000
        log = generate(users=users, days=14, seed=1)
        log.write(work / "gen", "csv")
        gen_csv = next((work / "gen" / "events").glob("*.csv"))
        inputs.append((f"generated ({users} users x 14 d)", gen_csv, "generic", len(log.events), True))

        for name, path, fmt, n, header in inputs:
            home = work / f"home-{fmt}"
            s = load_settings(home=home)
            start = time.perf_counter()
            summary = run_ingest(spark, s, str(path), fmt)
            spark_s = time.perf_counter() - start
            assert summary["accepted"] == n, (summary, n)
            duck_s = _duckdb_csv_to_parquet(path, work / f"{fmt}.parquet", header)
            rows.append(
                {
                    "input": name,
                    "events": n,
                    "spark_s": round(spark_s, 2),
                    "spark_events_per_s": round(n / spark_s),
                    "duckdb_csv_to_parquet_s": round(duck_s, 2),
                    "duckdb_events_per_s": round(n / duck_s),
                    "ratio_spark_to_duckdb": round(duck_s / spark_s, 3),
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = list(rows[0].keys()) if rows else []
    print_table("ingest throughput (Spark local vs DuckDB CSV->Parquet)", header, [list(r.values()) for r in rows])
    path = write_results("ingest", {"quick": args.quick, "rows": rows})
    print(f"results: {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
