"""`persona ingest`: raw behaviour files -> bronze.events (+ quarantine)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from persona.cli.app import app, settings, spark
from persona.progress import console, out, stage


@app.command("ingest")
def ingest(
    path: str = typer.Argument(..., help="A file, a directory or a glob of raw event files."),
    format: str = typer.Option("generic", "--format", "-f", help="Source format: generic | taobao | rees46."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Ingest raw events into bronze.events; bad rows go to bronze.events_quarantine with a reason.

    Idempotent: ingesting the same file again adds nothing.
    """
    from spark_jobs.bronze.ingest import preflight, run_ingest  # deferred: pyspark, kept out of `persona --help`

    preflight(path, format)  # bad paths and wrong formats fail before a Spark session starts
    with stage(f"ingest {path} ({format})"):
        summary = run_ingest(spark(), settings(), path, format)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title="ingest summary", show_header=False)
    table.add_row("files", str(summary["files"]))
    table.add_row("read", f"{summary['read']:,}")
    table.add_row("accepted (new events)", f"{summary['accepted']:,}")
    table.add_row("duplicates skipped", f"{summary['duplicates_skipped']:,}")
    table.add_row("quarantined", f"{summary['quarantined']:,}")
    for reason, n in sorted(summary["quarantined_by_reason"].items()):
        table.add_row(f"  {reason}", f"{n:,}")
    for etype, n in sorted(summary["by_event_type"].items()):
        table.add_row(f"valid {etype}", f"{n:,}")
    if summary["dates"]:
        table.add_row("event dates", f"{summary['dates'][0]} .. {summary['dates'][-1]}")
    out.print(table)
    if summary["quarantined"]:
        console.print(f"[yellow]{summary['quarantined']:,} rows quarantined[/] in bronze.events_quarantine")
