"""``persona materialize``: the latest row per user of each feature view into the online store.

Input: the serving Delta tables (one row per user per ``as_of_date``, stamped
``event_timestamp``) through Feast's registry and offline store. Output: one online row
per (user, feature view) in SQLite or Redis, written by the batch engine Feast is
configured with (persona's ``persona.serving.engine`` by default), and a summary of
rows written per view, seconds and rows/s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from pyspark.sql import functions as F

from core.dates import utc
from core.delta_log import latest_event_timestamp
from core.errors import InputError, NotBuiltError
from persona.progress import bar
from persona.serving import engine as feast_engine
from persona.serving.store import (
    VIEW_TABLES,
    check_online_store,
    feast_spark,
    get_store,
    require_registry,
    require_tables,
    session_for,
    user_errors,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from core.settings import Settings


def latest_snapshot(settings: "Settings", spark: "SparkSession") -> dt.datetime | None:
    """The newest ``event_timestamp`` over the serving tables (None when all are empty).

    Read from the Delta log's file statistics (delta-rs, milliseconds, no Spark job);
    rounded up to the end of that millisecond. Falls back to a Spark aggregate.
    """
    latest = None
    for table in VIEW_TABLES.values():
        ts = latest_event_timestamp(settings.table(table))
        if ts is None:
            row = spark.read.format("delta").load(settings.table(table)).agg(F.max("event_timestamp")).first()
            ts = utc(row[0]) if row and row[0] is not None else None
        if ts is not None:
            latest = ts if latest is None else max(latest, ts)
    return latest


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[None]:
    """A rich bar per write job, fed by the engine (Spark tasks or write batches)."""
    if not show:
        yield
        return
    with bar() as progress:
        tasks: dict[str, Any] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(f"materialize {label}", total=max(total, 1))
            progress.update(tasks[label], completed=done, total=max(total, 1))

        feast_engine.PROGRESS = update
        try:
            yield
        finally:
            feast_engine.PROGRESS = None


def materialize(
    settings: "Settings",
    start: dt.datetime | dt.date | None = None,
    end: dt.datetime | dt.date | None = None,
    spark: "SparkSession | None" = None,
    views: Sequence[str] | None = None,
    show_progress: bool = True,
) -> dict:
    """Load the latest row per user into the online store.

    Incremental by default (``start`` None): each view continues from where its last
    materialization ended; a view never materialized starts ``ttl`` before the newest
    snapshot (not before *now*: demo and backfilled data may be older than the ttl).
    ``end`` defaults to the later of now and the newest snapshot's ``event_timestamp``
    (today's snapshot is stamped at the end of today). With ``start``: exactly that window.
    Returns rows written per view, seconds and rows/s.
    """
    require_registry(settings)
    session = session_for(settings, spark)
    require_tables(settings, session)
    check_online_store(settings)
    store = get_store(settings)
    latest = latest_snapshot(settings, session)
    now = dt.datetime.now(dt.timezone.utc)
    end_ts = utc(end) if end is not None else max(now, latest or now)
    start_ts = utc(start) if start is not None else None
    if start_ts is not None and start_ts > end_ts:
        raise InputError(f"--start {start_ts.isoformat()} is after --end {end_ts.isoformat()}")
    ttl = dt.timedelta(days=settings.feast.ttl_days)
    feast_engine.LAST_RUN.clear()
    t0 = time.perf_counter()
    with user_errors(settings), feast_spark(session), _progress(show_progress), \
            contextlib.redirect_stdout(sys.stderr):  # Feast prints; keep stdout for results
        fvs = [fv for fv in store.list_feature_views() if views is None or fv.name in views]
        if views is not None and len(fvs) != len(set(views)):
            unknown = sorted(set(views) - {fv.name for fv in fvs})
            raise InputError(f"unknown feature view(s): {', '.join(unknown)}")
        if not fvs:
            raise NotBuiltError("no feature views registered (run `persona apply` first)")
        if start_ts is not None:
            mode = "window"
            store.materialize(start_ts, end_ts, feature_views=[fv.name for fv in fvs])
        else:
            mode = "incremental"
            fresh = [fv.name for fv in fvs if fv.most_recent_end_time is None]
            seen = [fv.name for fv in fvs if fv.most_recent_end_time is not None]
            if fresh:
                anchor = min(end_ts, latest or end_ts)
                store.materialize(anchor - ttl, end_ts, feature_views=fresh)
            if seen:
                store.materialize_incremental(end_ts, feature_views=seen)
    seconds = time.perf_counter() - t0
    # Rows per view: known with persona's engine; Feast's own engines do not report them.
    rows: dict[str, int] = {}
    for job in feast_engine.LAST_RUN:
        rows[job.view] = rows.get(job.view, 0) + job.rows
    total = sum(rows.values()) if rows else None
    return {
        "mode": mode,
        "start": start_ts.isoformat() if start_ts else None,
        "end": end_ts.isoformat(),
        "views": dict(rows),
        "rows": total,  # user x view rows written
        "users": max(rows.values()) if rows else None,
        "seconds": round(seconds, 3),
        "rows_per_s": round(total / seconds, 1) if total and seconds > 0 else None,
        "online_store": settings.feast.online_store,
        "engine": settings.feast.batch_engine,
    }
