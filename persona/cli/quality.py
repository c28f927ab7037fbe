"""`persona quality`: the data-quality gate's view of a range of event days
(volume and null rates against each day's trailing week; see spark_jobs/quality.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Optional

import typer
from rich.table import Table

from persona.cli.app import app, settings, spark
from core.dates import parse_date
from core.errors import InputError
from persona.progress import out


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1%}"


@app.command("quality")
def quality(
    start: str = typer.Option(..., "--start", help="First event day, YYYY-MM-DD."),
    end: Optional[str] = typer.Option(None, "--end", help="Last event day (default: --start)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per day."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero when any day is flagged."),
) -> None:
    """Check event days against their trailing week: volume ratio and missing-field rates.

    The same gate `persona build` / `backfill` run before writing (bounds in the
    `behaviour` config section; `behaviour.fail_on_quality` makes builds stop on a flag).
    """
    from spark_jobs.silver.quality import EXPECTED_FIELDS, DataQualityError, check  # deferred: pyspark, kept out of `persona --help`

    a = parse_date(start, "--start")
    b = parse_date(end, "--end") if end else a
    if b < a:
        raise InputError(f"--end {b} is before --start {a}")
    days = [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]
    report = check(spark(), settings(), days)
    if as_json:
        for row in report.as_rows():
            out.print(json.dumps(row, default=str))
    else:
        table = Table(title=f"data quality {a} .. {b}")
        for col in ["day", "events", "vs week", *[f"{f} missing" for f in EXPECTED_FIELDS], "flags"]:
            table.add_column(col)
        for d in report.days:
            table.add_row(str(d.event_date), f"{d.events:,}",
                          "no baseline" if d.volume_ratio is None else f"{d.volume_ratio:.2f}x",
                          *[_pct(d.null_rates[f]) for f in EXPECTED_FIELDS],
                          "; ".join(d.flags) or "ok")
        out.print(table)
    if strict and report.flagged:
        raise DataQualityError(f"{len(report.flagged)} of {len(report.days)} day(s) flagged")
