"""The end-to-end pipeline as stages, for `persona demo` (and `make demo`).

generate -> ingest -> backfill -> train encoder -> embed -> fuse -> Feast apply ->
materialize -> show (one online profile, a training set, an analyst SQL result).

Every stage is idempotent, so re-running the demo is safe: the generator writes the
same log for the same seed, ingest MERGEs on event ids, backfill skips built days,
an existing encoder / fusion model is reused (``retrain`` fits new versions), embed and
fuse replace their days, and Feast apply/materialize converge.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
from pyspark.sql import functions as F

from core.errors import NotBuiltError
from persona.demo.generator import generate
from persona.progress import bar, console, out, stage
from persona.serving.lookup import get_online, historical
from persona.serving.materialize import materialize
from persona.serving.store import apply
from persona.sql.embedded import embedded_engine
from persona.sql.query import run_view
from spark_jobs.bronze.ingest import run_ingest
from spark_jobs.gold import embed
from spark_jobs.gold.fuse import run_fuse
from spark_jobs.silver.behaviour import latest_complete_day, run_backfill


@dataclass
class DemoOptions:
    users: int = 1_000
    days: int = 40
    backfill_days: int = 30
    seed: int = 42
    retrain: bool = False


@dataclass
class DemoContext:
    spark: object
    settings: object
    options: DemoOptions
    facts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def _stage_generate(ctx: DemoContext) -> str:
    o = ctx.options
    target = ctx.settings.home.resolve() / "demo-input"
    marker = target / "params.json"
    params = {"users": o.users, "days": o.days, "seed": o.seed}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        ctx.facts["input"] = target / "events"
        return f"reusing {target} (same seed and size)"
    log = generate(users=o.users, days=o.days, seed=o.seed)
    log.write(target, "parquet")
    marker.write_text(json.dumps(params))
    ctx.facts["input"] = target / "events"
    return f"{len(log.events):,} events, {o.users:,} users, {o.days} days -> {target}"


def _stage_ingest(ctx: DemoContext) -> str:
    s = run_ingest(ctx.spark, ctx.settings, str(ctx.facts["input"]), "generic")
    return (f"read {s['read']:,}, new {s['accepted']:,}, duplicates skipped {s['duplicates_skipped']:,}, "
            f"quarantined {s['quarantined']:,}")


def _stage_backfill(ctx: DemoContext) -> str:
    end = latest_complete_day(ctx.spark, ctx.settings)
    start = end - dt.timedelta(days=ctx.options.backfill_days - 1)
    ctx.facts.update(start=start, end=end)
    with bar() as progress:
        task = progress.add_task("backfill days", total=ctx.options.backfill_days)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=max(total, 1))

        s = run_backfill(ctx.spark, ctx.settings, start, end, progress=report)
    return f"{start} .. {end}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("start", "end"))


def _stage_train(ctx: DemoContext) -> str:
    if not ctx.options.retrain:
        try:
            path = embed.resolve_model(ctx.settings)
            return f"reusing encoder {path.name} (--retrain to fit a new version)"
        except NotBuiltError:
            pass
    s = embed.train(ctx.spark, ctx.settings, as_of=ctx.facts["end"])
    keys = ("hr@10", "ndcg@10", "hr@10_popularity", "hr@10_user_top")
    return f"encoder {s['encoder_version']} on {s['users']:,} users: " + ", ".join(f"{k} {s[k]}" for k in keys if k in s)


def _stage_embed(ctx: DemoContext) -> str:
    s = embed.run(ctx.spark, ctx.settings, start=ctx.facts["start"], end=ctx.facts["end"])
    return f"{s['rows']:,} embeddings {s['start']} .. {s['end']} with encoder {s['encoder_version']}"


def _stage_fuse(ctx: DemoContext) -> str:
    end = ctx.facts["end"]
    lines = []
    # The previous day too, so the report can show drift between two as-of days.
    for day in (end - dt.timedelta(days=1), end):
        s = run_fuse(ctx.spark, ctx.settings, as_of=day, refit=ctx.options.retrain and day == end)
        lines.append(f"{day}: {s.get('users', s.get('rows', '?'))} profiles")
    s_keys = {k: v for k, v in s.items() if k in ("fusion_version", "k", "n_segments", "silhouette")}
    return "; ".join(lines) + " " + json.dumps(s_keys, default=str)


def _stage_apply(ctx: DemoContext) -> str:
    s = apply(ctx.settings, spark=ctx.spark)
    return ", ".join(f"{k} {v}" for k, v in s.items() if not isinstance(v, (list, dict))) or "applied"


def _stage_materialize(ctx: DemoContext) -> str:
    s = materialize(ctx.settings, spark=ctx.spark, show_progress=False)
    return f"{s['rows']} rows into {s['online_store']} in {s['seconds']}s ({s['rows_per_s']} rows/s)"


def _stage_show(ctx: DemoContext) -> str:
    profiles = ctx.spark.read.format("delta").load(ctx.settings.table("gold.user_profiles"))
    end = ctx.facts["end"]
    user = (profiles.where(F.col("as_of_date") == F.lit(end)).orderBy("user_id").select("user_id").first())[0]

    out.rule(f"online profile of user {user} (Feast, {ctx.settings.feast.online_store})")
    row = get_online(ctx.settings, [user], service="ranking_light_v1")[0]
    # Sorted keys: Feast's response order varies between processes; the demo's must not.
    out.print_json(json.dumps(row, default=str, sort_keys=True))

    out.rule("training set (point in time, Feast Spark offline store)")
    users = [r[0] for r in profiles.where(F.col("as_of_date") == F.lit(end)).orderBy("user_id").select("user_id").limit(3).collect()]
    # One stamp after the last snapshot, one inside the last day (sees the day before),
    # one a week back: a point-in-time join gives each the snapshot it could have seen.
    stamps = [dt.datetime.combine(end + dt.timedelta(days=d), dt.time(6), tzinfo=dt.timezone.utc) for d in (1, 0, -6)]
    entities = pd.DataFrame([(u, t) for u in users for t in stamps], columns=["user_id", "event_timestamp"])
    hist = historical(ctx.settings, entities, service="ranking_light_v1", spark=ctx.spark)
    cols = [c for c in hist.columns if c in ("user_id", "event_timestamp", "segment_id", "views_7d", "purchases_30d")]
    out.print(hist.select(*cols).orderBy("user_id", "event_timestamp").limit(6).toPandas().to_string(index=False))

    out.rule("analyst SQL: segment_summary (DuckDB, read-only, through SQLAlchemy)")
    engine = embedded_engine(ctx.settings)
    res = run_view(engine, "segment_summary", limit=8)
    frame = pd.DataFrame(res.rows, columns=res.columns)
    if {"as_of_date", "segment_id"} <= set(frame.columns):  # a view has no order of its own
        frame = frame.sort_values(["as_of_date", "segment_id"], ascending=[False, True])
    keep = [c for c in ("segment_id", "as_of_date", "users", "user_share", "avg_views_30d", "avg_spend_30d",
                        "top_category_1") if c in frame.columns]
    out.print(frame[keep or frame.columns].to_string(index=False, max_colwidth=24))
    return f"user {user}; {len(hist.columns)} training-set columns; {len(res.rows)} SQL rows"


STAGES: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("generate", _stage_generate),
    ("ingest", _stage_ingest),
    ("backfill", _stage_backfill),
    ("train encoder", _stage_train),
    ("embed", _stage_embed),
    ("fuse", _stage_fuse),
    ("feast apply", _stage_apply),
    ("materialize", _stage_materialize),
    ("show", _stage_show),
]


def run_demo(spark, settings, options: DemoOptions | None = None) -> dict:
    """Run every stage in order with a timing line each; returns the timings."""
    ctx = DemoContext(spark=spark, settings=settings, options=options or DemoOptions())
    t0 = time.perf_counter()
    for i, (name, fn) in enumerate(STAGES, 1):
        with stage(f"[{i}/{len(STAGES)}] {name}") as info:
            summary = fn(ctx)
        ctx.timings[name] = round(info["seconds"], 1)
        console.print(f"    {summary}")
    total = time.perf_counter() - t0
    console.print(f"[bold green]demo finished in {total:.0f}s[/] (state in {settings.home.resolve()})")
    console.print("timings: " + ", ".join(f"{k} {v}s" for k, v in ctx.timings.items()))
    return ctx.timings
