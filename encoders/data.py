"""Sequence arrays for the encoder: plain numpy/pandas, no Spark.

Input: rows shaped like ``silver.user_sequences`` (one row per user per as_of_date;
``item_ids``/``category_ids``/``event_types`` string arrays and ``gap_seconds`` float
array, each exactly ``length`` long, oldest first, right-padded with "" / 0.0; ``seq_len``
real events), as a pandas frame (what Spark's Arrow path hands a UDF, or ``toPandas``)
or a pyarrow RecordBatch.
Output: :class:`Sequences`, a struct of ``(N, L)`` numpy arrays (one row per user), the
form the model's string inputs take.

Also :func:`sequences_from_events`, a small pandas equivalent of the sequences job for
tests and for evaluating on raw samples without a warehouse.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# The model's input names, in the order of the sequences table columns.
ARRAY_COLUMNS = ("item_ids", "category_ids", "event_types", "gap_seconds")
PAD = ""


@dataclass
class Sequences:
    """Right-padded event sequences, one row per user (``(N, L)`` arrays)."""

    user_ids: np.ndarray  # (N,) object
    item_ids: np.ndarray  # (N, L) object (str)
    category_ids: np.ndarray  # (N, L) object (str)
    event_types: np.ndarray  # (N, L) object (str)
    gap_seconds: np.ndarray  # (N, L) float32

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def length(self) -> int:
        return self.item_ids.shape[1]

    @property
    def seq_len(self) -> np.ndarray:
        # Counted from the padding rather than trusted from a column: the mask the model
        # applies is exactly "event_type is not empty", so this agrees with it by design.
        return (self.event_types != PAD).sum(axis=1).astype(np.int32)

    def inputs(self) -> dict[str, np.ndarray]:
        """The model's input dict."""
        return {c: getattr(self, c) for c in ARRAY_COLUMNS}

    def take(self, idx) -> "Sequences":
        return Sequences(
            self.user_ids[idx], self.item_ids[idx], self.category_ids[idx],
            self.event_types[idx], self.gap_seconds[idx],
        )

    def drop_last(self) -> "Sequences":
        """Each sequence without its last real event (re-padded): the prefix that
        predicts it. Rows with no events stay empty."""
        n = self.seq_len
        rows = np.nonzero(n > 0)[0]
        last = n[rows] - 1
        out = Sequences(
            self.user_ids.copy(), self.item_ids.copy(), self.category_ids.copy(),
            self.event_types.copy(), self.gap_seconds.copy(),
        )
        for col in ("item_ids", "category_ids", "event_types"):
            getattr(out, col)[rows, last] = PAD
        out.gap_seconds[rows, last] = 0.0
        return out

    def last_category(self) -> np.ndarray:
        """Category of each row's last real event ("" for an empty row)."""
        n = self.seq_len
        out = np.full(len(n), PAD, dtype=object)
        rows = np.nonzero(n > 0)[0]
        out[rows] = self.category_ids[rows, n[rows] - 1]
        return out


def _stack(values, dtype) -> np.ndarray:
    """A column of equal-length sequences (numpy arrays or lists) -> one 2-D array."""
    if len(values) == 0:
        return np.empty((0, 0), dtype=dtype)
    return np.stack([np.asarray(v, dtype=dtype) for v in values])


def from_frame(pdf: pd.DataFrame) -> Sequences:
    """Sequences from a pandas frame with the ``silver.user_sequences`` array columns."""
    missing = [c for c in ("user_id", *ARRAY_COLUMNS) if c not in pdf.columns]
    if missing:
        raise ValueError(f"sequences frame lacks columns {missing}")
    strings = {}
    for col in ARRAY_COLUMNS[:3]:
        arr = _stack(pdf[col].to_numpy(), object)
        # Nulls inside arrays (a contract breach upstream) are treated as padding.
        if arr.size:
            arr[pd.isna(arr)] = PAD
        strings[col] = arr
    gaps = _stack(pdf["gap_seconds"].to_numpy(), np.float32)
    return Sequences(pdf["user_id"].to_numpy(dtype=object), strings["item_ids"],
                     strings["category_ids"], strings["event_types"], np.nan_to_num(gaps))


def from_arrow(batch) -> Sequences:
    """Sequences from a pyarrow RecordBatch/Table with the sequences columns.

    Fixed-length lists flatten to one buffer that reshapes to ``(N, L)`` without a
    Python object per row, which is what makes the Spark path as fast as in-process.
    """
    n = batch.num_rows
    cols = {}
    for name in ARRAY_COLUMNS:
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        flat = col.flatten()
        if n and len(flat) % n:
            raise ValueError(f"{name}: arrays are not all the same length")
        width = len(flat) // n if n else 0
        if name == "gap_seconds":
            values = pc.fill_null(flat, 0.0).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        else:
            values = pc.fill_null(flat, PAD).to_numpy(zero_copy_only=False)
        cols[name] = values.reshape(n, width)
    users = batch.column("user_id").to_numpy(zero_copy_only=False)
    return Sequences(np.asarray(users, dtype=object), **cols)


def sequences_from_events(
    events: pd.DataFrame,
    as_of: dt.date | None = None,
    length: int = 50,
) -> pd.DataFrame:
    """Per user, the last ``length`` events up to the end of ``as_of`` (default: all).

    ``events`` has the generic columns ``user_id, item_id, category_id, event_type,
    event_ts`` (``event_id`` breaks ties when present). Returns a pandas frame with the
    ``silver.user_sequences`` columns (except the timestamps), one row per user.
    Mirrors the sequences job: oldest first, right-padded, gap = seconds since the
    previous kept event (0 for the first).
    """
    ev = events
    if as_of is not None:
        end = pd.Timestamp(as_of + dt.timedelta(days=1), tz="UTC")
        ts = pd.to_datetime(ev["event_ts"], utc=True)
        ev = ev.loc[ts < end]
    keys = ["user_id", "event_ts"] + (["event_id"] if "event_id" in ev.columns else [])
    ev = ev.sort_values(keys, kind="stable")
    pos_from_end = ev.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    ev = ev.loc[pos_from_end < length]
    users, first = np.unique(ev["user_id"].to_numpy(dtype=object), return_index=True)
    # Rows are sorted by user, so np.unique's first-occurrence index gives each block start.
    order = np.argsort(first)
    users, first = users[order], first[order]
    counts = np.diff(np.append(first, len(ev)))
    row = np.repeat(np.arange(len(users)), counts)
    col = np.arange(len(ev)) - np.repeat(first, counts)

    def grid(values, fill, dtype):
        out = np.full((len(users), length), fill, dtype=dtype)
        out[row, col] = values
        return out

    ts = pd.to_datetime(ev["event_ts"], utc=True)
    ts_s = ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
    gaps = np.diff(ts_s, prepend=np.nan)
    gaps[col == 0] = 0.0

    def strings(name):
        return ev[name].astype(object).where(ev[name].notna(), PAD).astype(str).to_numpy(dtype=object)

    out = pd.DataFrame({
        "user_id": users,
        "item_ids": list(grid(strings("item_id"), PAD, object)),
        "category_ids": list(grid(strings("category_id"), PAD, object)),
        "event_types": list(grid(strings("event_type"), PAD, object)),
        "gap_seconds": list(grid(np.maximum(gaps, 0.0).astype(np.float32), 0.0, np.float32)),
        "seq_len": counts.astype(np.int32),
    })
    if as_of is not None:
        out.insert(1, "as_of_date", as_of)
    return out
