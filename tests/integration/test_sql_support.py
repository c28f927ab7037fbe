"""Helpers (no tests) shared by the SQL integration tests: one small warehouse per test
run, and a row comparison that tolerates the engines' representation differences
(PyHive returns dates and arrays as strings; float sums differ in the last bits)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench.sql holds the synthetic table writer
    sys.path.insert(0, str(REPO))

USERS, DAYS, EVENTS_PER_USER = 40, 3, 5
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def sql_home(spark, tmp_path_factory) -> Path:
    """A persona home holding synthetic bronze/silver/gold tables, written once per run
    (both SQL test modules reuse it)."""
    from bench.sql import write_synthetic_tables
    from core.settings import load_settings

    home = tmp_path_factory.getbasetemp() / "persona-sql-home"
    marker = home / ".tables-written"
    if not marker.exists():
        settings = load_settings(home=home, environ={})
        write_synthetic_tables(spark, settings, users=USERS, days=DAYS, events_per_user=EVENTS_PER_USER)
        marker.touch()
    return home


def normalize(value):
    if isinstance(value, str):
        if value[:1] in "[{" and value[-1:] in "]}":
            try:
                return normalize(json.loads(value))
            except ValueError:
                return value
        if _DATE.match(value):
            return dt.date.fromisoformat(value)
        return value
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "__float__") and not isinstance(value, (dt.date, dt.datetime)):
        return float(value)  # Decimal, numpy
    return value


def _key(row) -> str:
    """Sort key from the non-float cells (the grain's keys are among them)."""
    return repr([v for v in row if not isinstance(v, float)])


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_rows(left, right, what: str) -> None:
    lrows = sorted(([normalize(v) for v in r] for r in left), key=_key)
    rrows = sorted(([normalize(v) for v in r] for r in right), key=_key)
    assert len(lrows) == len(rrows), f"{what}: {len(lrows)} rows vs {len(rrows)}"
    for a, b in zip(lrows, rrows):
        assert len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b)), f"{what}:\n{a}\n!=\n{b}"
