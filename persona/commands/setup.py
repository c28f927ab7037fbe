"""Housekeeping commands: show the effective configuration, fetch the Delta jars."""

from __future__ import annotations

import json

import typer

from persona.cli import app, settings


@app.command("config")
def show_config() -> None:
    """Print the effective settings (defaults + file + environment) as JSON."""
    s = settings()
    data = json.loads(s.model_dump_json())
    data["warehouse_root"] = s.warehouse_root
    typer.echo(json.dumps(data, indent=2))


@app.command("fetch-jars")
def fetch_jars() -> None:
    """Resolve the Delta Lake jars from Maven Central into the local cache (install time only)."""
    from spark_jobs.jars import resolve

    for jar in resolve(settings().spark.jars_dir or None, quiet=True):
        typer.echo(str(jar))
