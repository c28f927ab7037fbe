"""``persona generate``: write a synthetic behaviour log (generic format) plus its ground truth.

Input: sizes, a seed and a start date. Output: ``<out>/events/part-*.<fmt>`` (one row per
event, the canonical ``generic`` columns) and ``<out>/truth/{users,categories}.parquet``.
No Spark needed: this is plain numpy, so it also runs where the warehouse does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from core.dates import parse_date
from core.errors import InputError
from persona.cli.app import app
from persona.progress import stage


@app.command("generate")
def generate_cmd(
    users: int = typer.Option(..., "--users", help="Number of users (> 0)."),
    days: int = typer.Option(..., "--days", help="Number of days in the window (> 0)."),
    out: Path = typer.Option(..., "--out", help="Output directory (its events/ and truth/ are replaced)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed and sizes give the same log."),
    start: str = typer.Option("2024-01-01", "--start", help="First day of the window (UTC), YYYY-MM-DD."),
    fmt: str = typer.Option("parquet", "--format", help="Events file format: parquet, csv or json (lines)."),
    categories: int = typer.Option(120, "--categories", help="Number of categories in the catalogue."),
    groups: int = typer.Option(4, "--groups", help="Planted user groups (1-4): browsers, buyers, night_owls, explorers."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate a synthetic e-commerce event log with known structure (about 10 events per user per day).

    Ingest the result with `persona ingest OUT/events --format generic`; OUT/truth holds the planted user groups, preferences and the category successor map.
    """
    # deferred: numpy, pandas and pyarrow
    from persona.demo.generator import generate, validate_args
    from persona.demo.log_files import FORMATS

    if users <= 0:
        raise InputError(f"--users must be > 0, got {users}")
    if days <= 0:
        raise InputError(f"--days must be > 0, got {days}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    start_date = parse_date(start, "--start")
    validate_args(users, days, seed, start_date, categories, groups)  # before any output

    with stage(f"generate {users:,} users x {days} days (seed {seed})") as gen_info:
        log = generate(users, days, seed=seed, start=start_date, n_categories=categories, n_groups=groups)
    with stage(f"write {len(log.events):,} events as {fmt} to {out}") as write_info:
        paths = log.write(out, fmt)

    summary = log.summary()
    summary.update(out=str(out), format=fmt, parts=len(paths),
                   generate_seconds=round(gen_info["seconds"], 2),
                   write_seconds=round(write_info["seconds"], 2))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    mix = " ".join(f"{t} {100 * p:.1f}%" for t, p in summary["mix"].items())
    rate = summary["events"] / max(gen_info["seconds"], 1e-9)
    # One line on stdout (scripts grep it); the progress/timing lines went to stderr.
    typer.echo(
        f"{summary['events']:,} events, {summary['users']:,} users, {days} days from {start_date} "
        f"-> {out} ({rate:,.0f} events/s) | {mix}"
    )
