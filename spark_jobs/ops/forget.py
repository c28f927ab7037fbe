"""Right to be forgotten, in the tables: ``run_forget(spark, settings, users)``.

Input: user ids as they appear in the source files (raw ids; with
``ingest.pseudonymise`` on, the keyed pseudonym ingest stored is derived here too, by
``core.privacy.pseudonym``, the function ingest uses).
Output: no row of those users in any table of the registry (one MERGE ... DELETE per
table; quarantine rows whose ``raw_record`` names an id as a whole token), and no file
that ever held them: the rewritten-away data files and deletion-vector files are
vacuumed with zero retention, and the Delta log history before a fresh checkpoint
(commit JSON with per-file min/max stats, ``.crc`` checksums listing files with stats,
older checkpoints) is removed. Grain of the summary: one entry per table; the ids are
never logged, the summary holds counts only. The online store is the application's
part (``persona.serving.forget``).

Why MERGE rather than ``DELETE ... WHERE user_id IN ('...')``: Delta writes a DELETE's
predicate, literals included, into the commit's ``operationParameters``; a MERGE
against a broadcast frame of ids records only ``t.user_id = s.uid``.

Meant to run while nothing else writes to the tables.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from core.errors import InputError
from core.privacy import hmac_key, pseudonym
from spark_jobs import delta_io
from spark_jobs.ops.housekeeping import has_deletion_vectors, history, metric, purge_log_history, quoted, vacuum
from spark_jobs.schemas import TABLES

QUARANTINE = "bronze.events_quarantine"
ENTITY = "user_id"
# A quarantine raw record names an id when the id is not glued to one of these characters
# (so "u12" does not match inside "u123", but does in "u12,10,pv" or '"user_id":"u12"').
TOKEN_CHARS = "A-Za-z0-9_"

Progress = Callable[[str], None] | None


def given_ids(users: Iterable[str]) -> list[str]:
    """The distinct ids a caller named, stripped; an empty id is an InputError."""
    given: list[str] = []
    for u in users:
        u = str(u).strip()
        if not u:
            raise InputError("user ids must not be empty")
        if u not in given:
            given.append(u)
    if not given:
        raise InputError("name at least one user id to forget")
    return given


def target_ids(settings, users: Iterable[str]) -> list[str]:
    """Every id under which the users may be stored: as given, and their pseudonym when
    ingest pseudonymises (rows ingested before it was switched on keep raw ids)."""
    given = given_ids(users)
    ids = list(given)
    if settings.ingest.pseudonymise:
        key = hmac_key(settings)
        ids += [p for p in (pseudonym(key, u) for u in given) if p not in ids]
    return ids


def token_pattern(user_id: str) -> str:
    """A Java regex matching ``user_id`` as a whole token (see TOKEN_CHARS)."""
    # Java allows a backslash before any non-alphabetic character: escape every ASCII
    # non-alphanumeric so ids with regex metacharacters match literally.
    escaped = "".join("\\" + c if c.isascii() and not c.isalnum() else c for c in user_id)
    return f"(?<![{TOKEN_CHARS}]){escaped}(?![{TOKEN_CHARS}])"


def _forget_table(spark: SparkSession, name: str, path: str, ids: Sequence[str]) -> dict:
    t0 = time.perf_counter()
    # A few ids: Spark broadcasts the source by itself (an explicit hint only draws a warning).
    source = spark.createDataFrame([(i, token_pattern(i)) for i in ids], "uid string, pattern string").alias("s")
    if name == QUARANTINE:
        # instr first: the regex only runs on records that contain the id at all.
        cond = "t.raw_record IS NOT NULL AND instr(t.raw_record, s.uid) > 0 AND t.raw_record RLIKE s.pattern"
    else:
        cond = f"t.{ENTITY} = s.uid"
    result = DeltaTable.forPath(spark, path).alias("t").merge(source, cond).whenMatchedDelete().execute()
    hist = history(spark, path, 1)
    if result is not None and "num_deleted_rows" in result.columns:
        rows = int(result.first()["num_deleted_rows"] or 0)
    else:  # older delta-spark: no result frame; the commit's metrics say the same
        rows = metric(hist, "MERGE", "numTargetRowsDeleted")
    rewritten = metric(hist, "MERGE", "numTargetFilesRemoved") if rows else 0
    purged = 0
    if has_deletion_vectors(spark, path):
        # With deletion vectors MERGE (and any earlier UPDATE/DELETE) only marks rows
        # deleted: the files still hold them, and stay live while they hold other rows.
        spark.sql(f"REORG TABLE {quoted(path)} APPLY (PURGE)").collect()
        purged = metric(history(spark, path, 1), "REORG", "numRemovedFiles")
    vacuumed = vacuum(spark, path, 0, override_check=True)
    log = purge_log_history(spark, path)
    return {
        "table": name,
        "status": "ok",
        "rows_deleted": rows,
        "files_rewritten": rewritten + purged,
        "files_vacuumed": vacuumed,
        **log,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run_forget(spark: SparkSession, settings, users: Iterable[str], progress: Progress = None) -> dict:
    """Remove the users from every table and its history; see the module docstring."""
    t0 = time.perf_counter()
    users = given_ids(users)
    ids = target_ids(settings, users)
    tables = []
    for name in TABLES:
        if progress:
            progress(name)
        path = settings.table(name)
        if not delta_io.is_delta(spark, path):
            tables.append({"table": name, "status": "absent", "rows_deleted": 0})
            continue
        tables.append(_forget_table(spark, name, path, ids))
    return {
        "users": len(users),
        "ids_matched": len(ids),
        "pseudonymised": settings.ingest.pseudonymise,
        "tables": tables,
        "rows_deleted": sum(t.get("rows_deleted", 0) for t in tables),
        "seconds": round(time.perf_counter() - t0, 2),
    }
