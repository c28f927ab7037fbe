"""Profile commands: fuse, explain, segments, export, report (gold.user_profiles).

The jobs and profile uses import pyspark; they are imported inside each command so that
``persona --help`` and the other commands start without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from core.dates import parse_date
from core.fs import writable_file
from persona.cli.app import app, settings, spark
from persona.progress import out, stage

_AS_OF = typer.Option(None, "--as-of", help="Day (YYYY-MM-DD). Default: the latest available.")


@app.command("fuse")
def fuse_cmd(
    as_of: Optional[str] = _AS_OF,
    refit: bool = typer.Option(False, "--refit", help="Fit and save a new fusion model version first."),
) -> None:
    """Fuse behaviour aggregates and the user embedding into gold.user_profiles.

    Scaler + PCA give the profile vector, BisectingKMeans the segment. The latest saved
    model is applied (axes stay comparable between days); the first run, or --refit,
    fits a new version under <home>/models/fusion/.
    """
    from spark_jobs.gold.fuse import run_fuse  # deferred: pyspark

    day = parse_date(as_of, "--as-of")
    with stage("fuse"):
        summary = run_fuse(spark(), settings(), as_of=day, refit=refit)
    verb = f"fitted ({summary['fit_reason']}) and applied" if summary["fitted"] else "applied"
    out.print(
        f"{summary['users']:,} profiles for {summary['as_of']}: fusion {summary['fusion_version']} {verb} "
        f"(k={summary['k']}, {summary['explained_variance']:.1%} variance, {summary['n_segments']} segments, "
        f"silhouette {summary['silhouette']:.3f})"
    )
    if summary["users_without_embedding"]:
        out.print(f"{summary['users_without_embedding']:,} users had behaviour but no embedding that day (skipped)")
    sizes = ", ".join(f"{k}: {v:,}" for k, v in summary["segment_sizes"].items())
    out.print(f"segment sizes: {sizes}")


@app.command("explain")
def explain_cmd(
    user: str = typer.Argument(..., help="user_id to explain."),
    as_of: Optional[str] = _AS_OF,
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON."),
) -> None:
    """Explain a user's profile: the features behind their position and their segment."""
    from persona.profiles.explain import explain_user, render_explanation  # deferred: pyspark

    e = explain_user(spark(), settings(), user, parse_date(as_of, "--as-of"))
    typer.echo(json.dumps(e, indent=2, default=str) if as_json else render_explanation(e))


@app.command("segments")
def segments_cmd(
    as_of: Optional[str] = _AS_OF,
    as_json: bool = typer.Option(False, "--json", help="Print the segments as JSON."),
) -> None:
    """Size and distinctive behaviour features of every segment."""
    from persona.profiles.explain import render_segments, segment_stats  # deferred: pyspark

    stats = segment_stats(spark(), settings(), parse_date(as_of, "--as-of"))
    if as_json:
        stats = dict(stats, segments=[{k: v for k, v in s.items() if k != "features"} for s in stats["segments"]])
        typer.echo(json.dumps(stats, indent=2, default=str))
    else:
        typer.echo(render_segments(stats))


@app.command("export")
def export_cmd(
    fmt: str = typer.Option(..., "--format", help="csv, json (JSON lines) or parquet."),
    out_path: Path = typer.Option(..., "--out", help="File to write (one file)."),
    as_of: Optional[str] = _AS_OF,
) -> None:
    """Export one day's profiles with their behaviour features, profile_vec and segment_id."""
    from persona.profiles.export import check_export_target, export_profiles  # deferred: pyspark

    check_export_target(fmt, out_path)  # fail before starting Spark
    day = parse_date(as_of, "--as-of")
    with stage("export"):
        summary = export_profiles(spark(), settings(), fmt, out_path, day)
    out.print(f"{summary['rows']:,} profiles of {summary['as_of']} -> {summary['path']} ({summary['bytes']:,} bytes)")


@app.command("report")
def report_cmd(
    out_path: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
    as_of: Optional[str] = _AS_OF,
) -> None:
    """Write a self-contained HTML report: variance, segments, key features, drift (PSI)."""
    from persona.profiles.report import write_report  # deferred: pyspark

    writable_file(out_path)  # fail before starting Spark
    day = parse_date(as_of, "--as-of")
    with stage("report"):
        summary = write_report(spark(), settings(), out_path, day)
    flagged = ", ".join(summary["drift_flagged"]) or "none"
    out.print(f"report for {summary['as_of']} -> {summary['path']} (drift flagged: {flagged})")
