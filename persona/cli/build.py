"""`persona build` and `persona backfill`: bronze.events -> silver.user_behaviour and
silver.user_sequences (see spark_jobs/silver/ and docs/features.md)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Optional

import typer
from rich.table import Table

from persona.cli.app import app, settings, spark
from core.dates import parse_date
from core.errors import InputError
from persona.progress import bar, out, stage


def _print(summary: dict, title: str, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)


def _quality_gate(start: dt.date, end: dt.date, summary: dict) -> None:
    """Show the data-quality gate's findings (spark_jobs.silver.quality, run by the job before it
    wrote anything; a gate configured to fail has already stopped the job)."""
    flags = summary.pop("quality_flags", [])
    for line in flags:
        out.print(f"[yellow]quality warning[/yellow] {line}")
    if flags:
        out.print(f"[yellow]{len(flags)} day(s) in {start} .. {end} flagged; set behaviour.fail_on_quality "
                  "to stop builds on flagged days[/yellow]")


@app.command("build")
def build(
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="As-of day YYYY-MM-DD. Default: the latest complete day in bronze.events."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Refresh one as-of day of silver.user_behaviour and silver.user_sequences.

    Reads only the 30 event_date partitions the day's windows need; re-running it
    leaves identical rows.
    """
    from spark_jobs.silver.behaviour import run_build  # deferred: pyspark, kept out of `persona --help`

    day = parse_date(as_of, "--as-of")
    with stage(f"build as of {day or 'latest complete day'}"):
        summary = run_build(spark(), settings(), day)
    built = dt.date.fromisoformat(summary["as_of"])
    _quality_gate(built, built, summary)
    _print(summary, "build summary", as_json)


@app.command("backfill")
def backfill(
    start: str = typer.Option(..., "--start", help="First as-of day, YYYY-MM-DD."),
    end: str = typer.Option(..., "--end", help="Last as-of day, YYYY-MM-DD (inclusive)."),
    force: bool = typer.Option(False, "--force", help="Recompute days that are already built and current."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compute every as-of day from --start to --end, in passes over the events (not one job per day).

    Resumable: days already built and still current are skipped unless --force;
    a day whose 30-day window received late data since it was built is recomputed.
    """
    from spark_jobs.silver.behaviour import run_backfill  # deferred: pyspark, kept out of `persona --help`

    a, b = parse_date(start, "--start"), parse_date(end, "--end")
    if b < a:
        raise InputError(f"--end {b} is before --start {a}")
    with bar() as progress:
        task = progress.add_task("backfill days", total=(b - a).days + 1)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=max(total, 1))

        summary = run_backfill(spark(), settings(), a, b, force=force, progress=report)
    _quality_gate(a, b, summary)
    _print(summary, "backfill summary", as_json)
