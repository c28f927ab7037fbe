"""Ingest raw behaviour files into ``bronze.events`` and ``bronze.events_quarantine``.

Input: a file, a directory (recursively, skipping hidden/underscore files) or a glob, in
one of the formats of ``spark_jobs.bronze.adapters``. Output grain: one bronze row per source
event; one quarantine row per rejected record (raw record, reason, source file).

Idempotence: ``event_id`` comes from the source (generic format) or is a hash of the
row's canonical fields plus its ordinal among identical rows of the same file, so the
same file always yields the same ids. Events are MERGEd on (event_date, event_id) and
quarantine rows on a record hash: ingesting a file twice adds nothing.
"""

from __future__ import annotations

import csv
import glob as globlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from core.errors import InputError
from core.privacy import hmac_key, pseudonym
from spark_jobs import delta_io
from spark_jobs.bronze import adapters
from spark_jobs.schemas import EVENTS, QUARANTINE, conform

GENERIC_EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv",
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
}
_SNIFF_BYTES = 64 * 1024
_URI_SCHEMES = ("s3a://", "s3://", "gs://", "abfss://", "hdfs://", "dbfs:/")


@dataclass
class IngestSummary:
    read: int = 0
    accepted: int = 0
    duplicates_skipped: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    files: int = 0
    by_event_type: dict[str, int] = field(default_factory=dict)
    dates: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------- input files
def resolve_inputs(path: str) -> list[str]:
    """The files PATH names (file, directory or glob), or a clear InputError."""
    if path.startswith(_URI_SCHEMES):
        return [path]  # remote storage: Spark lists it
    if any(ch in path for ch in "*?["):
        matches = sorted(p for p in globlib.glob(path, recursive=True) if os.path.isfile(p))
        files = [p for p in matches if not Path(p).name.startswith((".", "_"))]
        if not files:
            raise InputError(f"no input files match {path}")
        return [str(Path(f).resolve()) for f in files]
    p = Path(path)
    if not p.exists():
        raise InputError(f"input path does not exist: {path}")
    if p.is_file():
        return [str(p.resolve())]
    files = sorted(
        f for f in p.rglob("*")
        if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
    )
    if not files:
        raise InputError(f"no input files in directory {path}")
    return [str(f.resolve()) for f in files]


def _head(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_SNIFF_BYTES)


def _first_lines(data: bytes, n: int = 20) -> list[str]:
    text = data.decode("utf-8", errors="replace")
    lines = [ln.strip("\r") for ln in text.split("\n")]
    if len(data) == _SNIFF_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut mid-way
    return [ln for ln in lines if ln.strip()][:n]


def _looks_binary(data: bytes) -> bool:
    if b"\x00" in data[:4096]:
        return True
    sample = data[:4096].decode("utf-8", errors="replace")
    return sample.count("\ufffd") > max(8, len(sample) // 20)


def generic_kind(path: str, head: bytes) -> str:
    ext = Path(path).suffix.lower()
    if ext in GENERIC_EXTENSIONS:
        return GENERIC_EXTENSIONS[ext]
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip().startswith(b"{"):
        return "json"
    return "csv"


def sniff(path: str, fmt: str) -> str | None:
    """Check a local file is plausibly ``fmt`` before Spark reads it.

    Returns the generic sub-kind (csv/json/parquet) for generic files. Raises InputError
    for empty, binary or wrong-format files: a whole file of quarantined rows is almost
    always a wrong ``--format`` flag, and saying so is kinder than 100k quarantine rows.
    """
    if path.startswith(_URI_SCHEMES):
        return "parquet" if path.endswith(".parquet") else None
    head = _head(path)
    if not head.strip():
        raise InputError(f"{path} is empty")
    kind = generic_kind(path, head) if fmt == "generic" else "csv"
    if kind == "parquet":
        if not head.startswith(b"PAR1"):
            raise InputError(f"{path} is not a Parquet file (bad magic bytes)")
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            if fh.read(4) != b"PAR1":
                raise InputError(f"{path} is a truncated Parquet file (no footer)")
        return kind
    if _looks_binary(head):
        raise InputError(f"{path} is binary, not {fmt} text")
    lines = _first_lines(head)
    if not lines:
        raise InputError(f"{path} has no complete line of data")
    first = lines[0]
    if fmt == "taobao":
        good = sum(_taobao_line_ok(ln) for ln in lines)
        if good == 0:
            raise InputError(
                f"{path} does not look like taobao data "
                f"(expected user_id,item_id,category_id,behavior_type,unix_seconds; got {first[:80]!r})"
            )
    elif fmt == "rees46":
        header = ",".join(adapters.REES46_COLUMNS)
        if first.replace(" ", "").lower() != header:
            raise InputError(f"{path} does not look like rees46 data (expected header {header!r}; got {first[:80]!r})")
    elif kind == "csv":
        cols = [c.strip().lower() for c in _csv_fields(first)]
        missing = [c for c in adapters.GENERIC_REQUIRED if c not in cols]
        if missing:
            raise InputError(f"{path} does not look like generic CSV: header lacks {', '.join(missing)} (got {first[:80]!r})")
    elif kind == "json":
        try:
            obj = json.loads(first)
        except ValueError:
            raise InputError(f"{path} does not look like JSON lines (first line is not a JSON object)") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path} does not look like JSON lines (first line is not a JSON object)")
    return kind


def _csv_fields(line: str) -> list[str]:
    """Fields of one CSV line, honouring quotes (headers are often quoted)."""
    return next(csv.reader([line]), [])


def _taobao_line_ok(line: str) -> bool:
    parts = line.split(",")
    return len(parts) == 5 and parts[3].strip().lower() in adapters.TAOBAO_TYPES and parts[4].strip().isdigit()


def _generic_columns(spark: SparkSession, files: list[str], kind: str) -> list[str]:
    """Canonical columns the generic files carry (header / keys / parquet schema)."""
    known = set(adapters.GENERIC_REQUIRED) | set(adapters.GENERIC_OPTIONAL)
    cols: list[str] = []
    for f in files:
        if kind == "parquet":
            found = spark.read.parquet(f).columns
        elif kind == "json":
            found = []
            for ln in _first_lines(_head(f), 50):
                try:
                    obj = json.loads(ln)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    found.extend(k for k in obj if k not in found)
        else:
            found = [c.strip() for c in _csv_fields(_first_lines(_head(f), 1)[0])]
        if kind == "csv" and cols and found != cols:
            raise InputError(f"{f}: CSV header differs from the other files' header")
        for c in found:
            if c not in cols:
                cols.append(c)
    missing = [c for c in adapters.GENERIC_REQUIRED if c not in cols]
    if missing:
        raise InputError(f"generic input lacks required columns: {', '.join(missing)}")
    if kind == "csv":
        return cols  # positional: every header column, known or not
    return [c for c in cols if c in known]


def preflight(path: str, fmt: str) -> list[str]:
    """Resolve and sniff the inputs without Spark: bad input fails in milliseconds."""
    if fmt not in adapters.FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(adapters.FORMATS)}")
    files = resolve_inputs(path)
    for f in files:
        sniff(f, fmt)
    return files


# ---------------------------------------------------------------------------- parsing
def parse(spark: SparkSession, files: list[str], fmt: str, settings) -> DataFrame:
    """Raw files -> canonical columns + ``reason``; one frame for valid and bad rows."""
    if fmt not in adapters.FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(adapters.FORMATS)}")
    kinds = {sniff(f, fmt) for f in files}
    if fmt == "generic":
        kinds.discard(None)
        if len(kinds) > 1:
            raise InputError(f"mixed file kinds in one generic ingest: {sorted(kinds)}; ingest them separately")
        kind = kinds.pop() if kinds else "parquet"
        cols = _generic_columns(spark, files, kind)
        raw = adapters.read_generic(spark, files, kind, cols)
        canon = adapters.generic_to_canonical(raw)
    else:
        adapter = adapters.ADAPTERS[fmt]
        canon = adapter.to_canonical(adapter.read(spark, files))
    return adapters.validate(canon, settings.ingest.max_future_days, settings.ingest.min_event_date)


def with_event_ids(df: DataFrame) -> DataFrame:
    """Deterministic ``event_id``: the source's, else a hash of the canonical fields plus
    the row's ordinal among identical rows of its file (so genuine repeats survive and a
    re-read of the same file yields the same ids)."""
    key_cols = ["source", "user_id", "item_id", "category_id", "event_type", "_raw_ts",
                "_raw_price", "_raw_quantity", "session_id", "query", "brand"]
    content = F.sha2(F.concat_ws("\u241f", *[F.coalesce(F.col(c).cast("string"), F.lit("\u2400")) for c in key_cols]), 256)
    # Rows in one window are identical in every hashed field, so any order numbers them
    # alike; ordering by the key itself keeps the plan deterministic, which lets Delta's
    # MERGE skip re-materialising its source.
    w = Window.partitionBy("_file", "_content").orderBy("_content")
    with_content = df.withColumn("_content", content)
    ordinal = F.row_number().over(w)
    derived = F.substring(F.sha2(F.concat_ws(":", F.col("_content"), ordinal.cast("string")), 256), 1, 32)
    return with_content.withColumn(
        "event_id", F.coalesce(F.col("source_event_id"), derived)
    ).drop("_content")


def pseudonymise(df: DataFrame, settings) -> DataFrame:
    """Replace user_id by its keyed HMAC pseudonym when configured (key never stored)."""
    if not settings.ingest.pseudonymise:
        return df
    key = hmac_key(settings)

    @F.udf(StringType())
    def _pseudonym(uid):  # pragma: no cover - runs in the Python worker
        return None if uid is None else pseudonym(key, uid)

    return df.withColumn("user_id", _pseudonym(F.col("user_id")))


# ------------------------------------------------------------------------------- job
def run_ingest(spark: SparkSession, settings, path: str, fmt: str, progress=None) -> dict:
    """Ingest PATH in format FMT; returns the summary (read, accepted, duplicates, quarantine)."""
    files = resolve_inputs(path)
    parsed = parse(spark, files, fmt, settings)
    # Pseudonymise first, so derived event ids are hashes of the HMAC, not of raw ids.
    parsed = with_event_ids(pseudonymise(parsed, settings))
    now = F.current_timestamp()
    staged = parsed.withColumn("ingested_at", now).persist()
    try:
        return _write(spark, settings, staged, files, fmt)
    finally:
        staged.unpersist()


def _write(spark: SparkSession, settings, staged: DataFrame, files: list[str], fmt: str) -> dict:
    summary = IngestSummary(files=len(files))
    stats = staged.groupBy("reason").count().collect()
    summary.read = sum(r["count"] for r in stats)
    summary.quarantined_by_reason = {r["reason"]: r["count"] for r in stats if r["reason"] is not None}
    summary.quarantined = sum(summary.quarantined_by_reason.values())

    events_path = settings.table("bronze.events")
    quarantine_path = settings.table("bronze.events_quarantine")
    delta_io.create_if_missing(spark, events_path, EVENTS, ["event_date"])
    delta_io.create_if_missing(spark, quarantine_path, QUARANTINE, ["ingest_date"])

    valid = staged.where(F.col("reason").isNull()).dropDuplicates(["event_id"])
    valid = conform(valid, EVENTS)
    dates = [r[0] for r in valid.select("event_date").distinct().collect()]
    summary.dates = sorted(d.isoformat() for d in dates)
    inserted = 0
    if dates:
        # Restricting the merge to the batch's dates lets Delta prune every other partition.
        date_list = ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(dates))
        target = DeltaTable.forPath(spark, events_path)
        version_before = _version(target)
        (
            target.alias("t")
            .merge(valid.alias("s"), f"t.event_date IN ({date_list}) AND t.event_date = s.event_date AND t.event_id = s.event_id")
            .whenNotMatchedInsertAll()
            .execute()
        )
        inserted = _inserted_since(target, version_before)
    summary.accepted = inserted
    valid_rows = summary.read - summary.quarantined
    summary.duplicates_skipped = valid_rows - inserted

    bad = staged.where(F.col("reason").isNotNull()).select(
        F.col("_raw").alias("raw_record"),
        F.col("reason"),
        F.col("_file").alias("source_file"),
        F.lit(fmt).alias("source_format"),
        F.sha2(F.concat_ws("\u241f", F.coalesce(F.col("_raw"), F.lit("")), F.col("reason"), F.coalesce(F.col("_file"), F.lit("")), F.col("event_id")), 256).alias("record_hash"),
        F.col("ingested_at"),
        F.to_date(F.col("ingested_at")).alias("ingest_date"),
    ).dropDuplicates(["record_hash"])
    if summary.quarantined:
        q = DeltaTable.forPath(spark, quarantine_path)
        q.alias("t").merge(conform(bad, QUARANTINE).alias("s"), "t.record_hash = s.record_hash").whenNotMatchedInsertAll().execute()

    # Valid events of this batch by type (new and already present alike).
    by_type = valid.groupBy("event_type").count().collect()
    summary.by_event_type = {r["event_type"]: r["count"] for r in by_type}
    return summary.as_dict()


def _version(table) -> int:
    return int(table.history(1).select("version").collect()[0][0])


def _inserted_since(table, version_before: int) -> int:
    """Rows the merge inserted; a merge that matched everything commits no version."""
    last = table.history(1).select("version", "operationMetrics").collect()[0]
    if int(last["version"]) == version_before:
        return 0
    return int((last["operationMetrics"] or {}).get("numTargetRowsInserted", 0))
