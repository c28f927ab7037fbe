"""A whole-pipeline driver for the reliability tests, usable in-process or as a script.

Input: a generated event log (generic parquet) and a persona home. Output: the Delta
tables of every stage under ``<home>/warehouse`` and, on request, a JSON summary with a
content hash per table (grain: one hash per table over all its rows).

In-process: ``run_stages(spark, settings, input_dir, stages)``.
As a script (a separate driver process, e.g. one talking to a standalone cluster, or one
the tests ``kill -9``)::

    python tests/support/pipeline.py --home H --input DIR --stages ingest,backfill,... \
        [--summary out.json] [--encoder-from OTHER_HOME]

Settings come from the environment as for the CLI (``PERSONA__SPARK__MASTER`` ...).

Content hashes (``table_hash``) read the Delta table with delta-rs (no JVM), drop the
columns that record *when* something was computed (``created_timestamp``,
``ingested_at``), round floats to 5 decimals (a sum over differently ordered partitions
may differ in the last bits) and hash the sorted rows: equal hashes mean equal content,
whatever the file layout or commit history.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TABLES = (
    "bronze.events",
    "bronze.events_quarantine",
    "silver.user_sequences",
    "silver.user_behaviour",
    "gold.user_embeddings",
    "gold.user_profiles",
)
# When a row was computed, not what it says.
COMPUTE_TIME_COLUMNS = ("created_timestamp", "ingested_at", "ingest_date")
ALL_STAGES = ("ingest", "backfill", "train", "embed", "fuse", "apply", "materialize")
FLOAT_DECIMALS = 5


# ----------------------------------------------------------------------------- hashes
def _canon(value):
    """A stable, rounded, JSON-able form of one cell."""
    import numpy as np

    if value is None:
        return None
    if isinstance(value, float | np.floating):
        if value != value:  # NaN
            return "nan"
        return round(float(value), FLOAT_DECIMALS) + 0.0  # -0.0 -> 0.0
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in sorted(value.items())}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def table_rows(path: str | Path, version: int | None = None) -> list[str]:
    """Every row of the Delta table at ``path`` (optionally an older version) as a
    canonical JSON string, compute-time columns dropped, sorted."""
    from deltalake import DeltaTable

    dt_ = DeltaTable(str(path), version=version)
    arrow = dt_.to_pyarrow_table()
    cols = [c for c in arrow.column_names if c not in COMPUTE_TIME_COLUMNS]
    data = arrow.select(cols).to_pylist()
    rows = [json.dumps({c: _canon(r[c]) for c in cols}, sort_keys=True, default=str) for r in data]
    rows.sort()
    return rows


def table_hash(path: str | Path, version: int | None = None) -> str:
    h = hashlib.sha256()
    n = 0
    for row in table_rows(path, version):
        h.update(row.encode())
        h.update(b"\n")
        n += 1
    return f"{n}:{h.hexdigest()[:16]}"


def table_version(path: str | Path) -> int | None:
    """The latest committed version, or None when there is no table."""
    log = Path(path) / "_delta_log"
    if not log.is_dir():
        return None
    versions = [int(p.name.split(".")[0]) for p in log.glob("*.json") if p.name.split(".")[0].isdigit()]
    return max(versions) if versions else None


def warehouse_hashes(home: str | Path) -> dict[str, str]:
    """``{table: hash}`` for every pipeline table that exists under ``home``."""
    out = {}
    for t in TABLES:
        layer, name = t.split(".")
        path = Path(home) / "warehouse" / layer / name
        if (path / "_delta_log").is_dir():
            out[t] = table_hash(path)
    return out


# ------------------------------------------------------------------------ the test setup
# Small and fast, identical for every run that is compared with another: 60 users x 10
# days, a tiny encoder, few segment candidates.
TEST_ENV = {
    "PERSONA__SPARK__MASTER": "local[2]",
    "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4",
    "PERSONA__ENCODER__EPOCHS": "1",
    "PERSONA__ENCODER__HIDDEN_DIM": "16",
    "PERSONA__ENCODER__EMBEDDING_DIM": "8",
    "PERSONA__ENCODER__ITEM_BUCKETS": "2000",
    "PERSONA__ENCODER__CATEGORY_BUCKETS": "200",
    "PERSONA__FUSION__MAX_SEGMENTS": "3",
    "PERSONA__FUSION__MAX_ITER": "5",
    "PERSONA__FUSION__RESTARTS": "1",  # reliability compares runs, not clustering quality
}
USERS, DAYS, SEED = 60, 10, 5
SERVICE = "ranking_light_v1"


def make_settings(home, **overrides):
    """Settings for a test home: TEST_ENV plus ``section__key=value`` overrides."""
    from core.settings import load_settings

    env = dict(TEST_ENV)
    env.update({"PERSONA__" + k.upper(): str(v) for k, v in overrides.items()})
    return load_settings(home=home, environ=env)


def make_log(out_dir, users: int = USERS, days: int = DAYS, seed: int = SEED) -> Path:
    """The generated log as generic parquet; returns its events directory."""
    from persona.demo.generator import generate

    out = Path(out_dir)
    events = out / "events"
    if not (out / "done").is_file():
        generate(users=users, days=days, seed=seed).write(out, "parquet")
        (out / "done").write_text("ok")
    return events


def sample_users(home, n: int = 5) -> list[str]:
    from deltalake import DeltaTable

    ids = DeltaTable(str(Path(home) / "warehouse" / "bronze" / "events")).to_pyarrow_table(
        columns=["user_id"]).column("user_id").to_pylist()
    return sorted(set(ids))[:n]


def canon_rows(rows: list[dict]) -> list:
    return [_canon(r) for r in rows]


def baseline_dir(tmp_path_factory) -> Path:
    """Where the session's baseline lives: under the session's temp dir, or (developing
    these tests) a fixed folder named by PERSONA_TEST_BASELINE so reruns skip it."""
    import os

    fixed = os.environ.get("PERSONA_TEST_BASELINE")
    return Path(fixed) if fixed else tmp_path_factory.getbasetemp() / "persona-baseline"


def baseline(spark, base_dir) -> dict:
    """The whole pipeline run once locally in this process (embedded defaults: SQLite
    online store), memoised under ``base_dir`` so every test module of a session compares
    against the same run. Returns stage summaries, table hashes, online rows."""
    base = Path(base_dir)
    marker = base / "baseline.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    from persona.serving.lookup import get_online

    home = base / "home"
    events = make_log(base / "log")
    settings = make_settings(home)
    result = run_stages(spark, settings, events, ALL_STAGES)
    result["home"] = str(home)
    result["input"] = str(events)
    result["hashes"] = warehouse_hashes(home)
    result["users"] = sample_users(home)
    result["online"] = canon_rows(get_online(settings, result["users"], service=SERVICE))
    marker.write_text(json.dumps(result, default=str))
    return json.loads(marker.read_text())


# ------------------------------------------------------------------------------ stages
def data_days(input_dir: str | Path) -> tuple[dt.date, dt.date]:
    import pyarrow.parquet as pq

    ts = pq.read_table(str(Path(input_dir)), columns=["event_ts"]).column("event_ts").to_pylist()
    days = [t.date() if hasattr(t, "date") else dt.datetime.fromisoformat(str(t)).date() for t in ts]
    return min(days), max(days)


def run_stages(spark, settings, input_dir, stages=ALL_STAGES, encoder_from: str | Path | None = None,
               log=print, force: bool = False) -> dict:
    """Run the named stages in pipeline order; returns ``{stage: summary}``."""
    from spark_jobs.silver import behaviour
    from spark_jobs.gold import embed
    from spark_jobs.gold import fuse
    from spark_jobs.bronze.ingest import run_ingest

    input_dir = Path(input_dir)
    first, last = data_days(input_dir)
    out: dict = {"first_day": first.isoformat(), "last_day": last.isoformat(), "seconds": {}}

    def timed(name, fn):
        t0 = time.perf_counter()
        out[name] = fn()
        out["seconds"][name] = round(time.perf_counter() - t0, 2)
        log(f"stage {name} done in {out['seconds'][name]}s", flush=True)

    if "ingest" in stages:
        timed("ingest", lambda: run_ingest(spark, settings, str(input_dir), "generic"))
    if "backfill" in stages:
        timed("backfill", lambda: behaviour.run_backfill(spark, settings, first, last, force=force))
    if "build" in stages:  # today's refresh: one as-of day, always recomputed
        timed("build", lambda: behaviour.run_build(spark, settings, last))
    if "train" in stages:
        if encoder_from:
            # The same model as another run: training is not part of what is compared,
            # applying it is (TF training is not bit-reproducible across processes).
            src = Path(encoder_from) / "models" / "encoder"
            dst = settings.models_root("encoder")
            shutil.copytree(src, dst, dirs_exist_ok=True)
            out["train"] = {"copied_from": str(src)}
        else:
            timed("train", lambda: embed.train(spark, settings, as_of=last))
    if "embed" in stages:
        timed("embed", lambda: embed.run(spark, settings, start=first, end=last))
    if "fuse" in stages:
        timed("fuse", lambda: fuse.run_fuse(spark, settings, as_of=last))
    if "apply" in stages:
        from persona.serving.store import apply

        timed("apply", lambda: apply(settings, spark=spark))
    if "materialize" in stages:
        from persona.serving.materialize import materialize

        timed("materialize", lambda: materialize(settings, spark=spark, show_progress=False))
    return out


def probe_executors(spark) -> list[dict]:
    """Where each executor's Python imports the project from (one task per core)."""
    n = max(2, spark.sparkContext.defaultParallelism)

    def where(_):
        import sys

        import encoders
        import persona
        import spark_jobs

        yield {
            "files": {m.__name__: m.__file__ for m in (persona, spark_jobs, encoders)},
            "editable_finder": any("__editable__" in getattr(f, "__module__", "") for f in sys.meta_path),
        }

    return spark.sparkContext.parallelize(range(n), n).mapPartitions(where).collect()


def slow_writes(seconds: float, partitions: int = 8) -> None:
    """Make every Delta write of this process hold its files open: the written frame is
    spread over ``partitions`` tasks and each task but the first sleeps ``seconds``
    before producing rows. Task 0's files land in the table directory while the others
    sleep, so a test that sees new data files knows the commit has not happened yet
    and can kill the driver in the middle of the write. Only the timing changes: the
    write path (conform, replaceWhere, Delta commit) is the real one."""
    from spark_jobs import delta_io

    original = delta_io.conform

    def held(batches):
        import time as _time

        from pyspark import TaskContext

        if TaskContext.get().partitionId() > 0:
            _time.sleep(seconds)
        yield from batches

    def conform(df, schema):
        out = original(df, schema)
        return out.repartition(partitions).mapInPandas(held, out.schema)

    delta_io.conform = conform


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--stages", default=",".join(ALL_STAGES))
    p.add_argument("--summary", default=None, help="write stage summaries + table hashes here (JSON)")
    p.add_argument("--encoder-from", default=None, help="copy the encoder models of this home")
    p.add_argument("--get", default=None, help="comma-separated users to read online after the stages")
    p.add_argument("--probe", action="store_true", help="report where executors import the project from")
    p.add_argument("--force", action="store_true", help="backfill: recompute every day")
    p.add_argument("--slow-write", type=float, default=0.0, help="hold each Delta write open this long (s)")
    args = p.parse_args(argv)

    from core.settings import load_settings
    from spark_jobs.session import get_spark

    settings = load_settings(home=args.home)
    spark = get_spark(settings)
    if args.slow_write:
        slow_writes(args.slow_write)
    print(f"driver up: master {spark.sparkContext.master}", flush=True)
    stages = [s for s in args.stages.split(",") if s]
    result = run_stages(spark, settings, args.input, stages, encoder_from=args.encoder_from, force=args.force)
    if args.probe:
        result["executor_imports"] = probe_executors(spark)
    if args.get:
        from persona.serving.lookup import get_online

        result["online"] = canon_rows(get_online(settings, args.get.split(","), service=SERVICE))
    result["hashes"] = warehouse_hashes(args.home)
    if args.summary:
        Path(args.summary).write_text(json.dumps(result, default=str, indent=1))
    print("driver finished", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
