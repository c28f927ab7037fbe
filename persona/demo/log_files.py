"""Writing a generated log to files that ``persona ingest --format generic`` reads.

Input: the events frame (one row per event, the ``generic`` columns) and the truth
frames (one row per user, one per category) of a ``GeneratedLog``. Output:
``<out>/events/part-NNNNN.<parquet|csv|json>`` (``rows_per_part`` events per part, in
the frame's order) and ``<out>/truth/{users,categories}.parquet``; only those two
folders of ``<out>`` are replaced.

Text formats carry ISO-8601 UTC timestamps ("2024-01-01T09:18:42.110898Z"); Parquet
carries microsecond UTC timestamps (Spark 4 refuses nanoseconds, PITFALLS.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.errors import InputError

FORMATS = ("parquet", "csv", "json")


def write_log(events: pd.DataFrame, users: pd.DataFrame, categories: pd.DataFrame, out_dir,
              fmt: str = "parquet", rows_per_part: int = 1_000_000) -> list[Path]:
    """Write the events in parts and the truth frames; returns the event part paths."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a directory")
    ev_dir, truth_dir = out / "events", out / "truth"
    # Only the two folders we own are replaced: anything else in <out> stays.
    for d in (ev_dir, truth_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    paths = []
    n = len(events)
    n_parts = max(1, -(-n // rows_per_part))
    ext = {"parquet": "parquet", "csv": "csv", "json": "json"}[fmt]
    for p in range(n_parts):
        part = events.iloc[p * rows_per_part:(p + 1) * rows_per_part]
        path = ev_dir / f"part-{p:05d}.{ext}"
        _write_part(part, path, fmt)
        paths.append(path)
    _write_parquet(users, truth_dir / "users.parquet")
    _write_parquet(categories, truth_dir / "categories.parquet")
    return paths


def _events_arrow_schema() -> pa.Schema:
    return pa.schema([
        ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
        ("category_id", pa.string()), ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")), ("price", pa.float64()),
        ("quantity", pa.int32()), ("session_id", pa.string()), ("query", pa.string()),
        ("brand", pa.string()),
    ])


def _write_parquet(df: pd.DataFrame, path: Path, schema=None) -> None:
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    # Spark 4 refuses nanosecond parquet timestamps (PITFALLS.md).
    pq.write_table(table, path, coerce_timestamps="us", allow_truncated_timestamps=True)


def _iso_utc(ts: pd.Series) -> np.ndarray:
    # numpy formats a million timestamps ~20x faster than strftime.
    raw = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]")
    return np.char.add(np.datetime_as_string(raw, unit="us"), "Z")


def _write_part(part: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        _write_parquet(part, path, _events_arrow_schema())
        return
    # Text formats carry ISO-8601 UTC timestamps ("2024-01-01T09:18:42.110898Z").
    text = part.copy()
    text["event_ts"] = _iso_utc(part["event_ts"])
    schema = _events_arrow_schema().set(5, pa.field("event_ts", pa.string()))
    table = pa.Table.from_pandas(text, schema=schema, preserve_index=False)
    if fmt == "csv":
        pacsv.write_csv(table, path)
    else:
        # DuckDB writes JSON lines ~4x faster than pandas.to_json (3.5 s vs 15 s per 1M rows).
        con = duckdb.connect()
        try:
            con.register("part", table)
            con.execute(f"COPY part TO '{_sql_quote(path)}' (FORMAT JSON)")
        finally:
            con.close()


def _sql_quote(path: Path) -> str:
    return str(path).replace("'", "''")
