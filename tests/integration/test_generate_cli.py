"""``persona generate`` as a user runs it (subprocess), and Spark 4 reading what it wrote
in every format with the canonical column types (the ingest job's input contract)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The console script (not `python -m persona.cli.app`: there the command modules would register
# on a second copy of the app).
PERSONA = [str(Path(sys.executable).parent / "persona")]


def _run(*args, cwd=None):
    return subprocess.run([*PERSONA, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.e2e
def test_cli_writes_log_and_summary(tmp_path):
    out = tmp_path / "gen"
    r = _run("generate", "--users", "80", "--days", "5", "--seed", "4", "--out", str(out),
             "--start", "2024-05-01", "--format", "csv")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert "events, 80 users, 5 days from 2024-05-01" in line and "view" in line and "purchase" in line
    assert "done generate" in r.stderr  # the timing lines go to stderr
    assert (out / "events" / "part-00000.csv").exists()
    assert (out / "truth" / "users.parquet").exists()

    r2 = _run("generate", "--users", "80", "--days", "5", "--seed", "4", "--out", str(out),
              "--start", "2024-05-01", "--format", "csv", "--json")
    assert r2.returncode == 0, r2.stderr
    summary = json.loads(r2.stdout)
    assert summary["users"] == 80 and summary["format"] == "csv"
    assert str(summary["events"]) == line.split(" events")[0].replace(",", "")  # same seed, same log


@pytest.mark.e2e
@pytest.mark.parametrize("args, message", [
    (["--users", "0", "--days", "3"], "--users must be > 0"),
    (["--users", "3", "--days", "3", "--start", "2024-02-30"], "--start must be a date"),
    (["--users", "3", "--days", "3", "--groups", "7"], "n_groups must be between 1 and 4"),
])
def test_cli_bad_arguments_one_line(tmp_path, args, message):
    r = _run("generate", *args, "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_spark_reads_generated_files(spark, tmp_path, fmt):
    from pyspark.sql import types as T

    from persona.demo.generator import generate
    from spark_jobs.schemas import EVENTS

    log = generate(40, 3, seed=2)
    log.write(tmp_path, fmt)
    schema = T.StructType([f for f in EVENTS.fields if f.name not in ("event_date", "source", "ingested_at")])
    path = str(tmp_path / "events")
    if fmt == "parquet":
        df = spark.read.parquet(path)
        assert dict(df.dtypes)["event_ts"] == "timestamp"
    elif fmt == "csv":
        df = spark.read.schema(schema).option("header", True).option("mode", "FAILFAST").csv(path)
    else:
        df = spark.read.schema(schema).option("mode", "FAILFAST").json(path)
    rows = df.orderBy("event_id").collect()
    assert len(rows) == len(log.events)
    ev = log.events.sort_values("event_id").reset_index(drop=True)
    first = rows[0].asDict()
    assert first["event_id"] == ev.loc[0, "event_id"]
    assert first["user_id"] == ev.loc[0, "user_id"]
    # The session time zone is UTC, so Spark's naive datetime is the UTC wall clock.
    assert first["event_ts"] == ev.loc[0, "event_ts"].tz_convert("UTC").tz_localize(None).to_pydatetime()
    assert sum(r["query"] is not None for r in rows) == int(ev["query"].notna().sum())
    assert sum(r["quantity"] is not None for r in rows) == int(ev["quantity"].notna().sum())
