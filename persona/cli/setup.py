"""Housekeeping commands: show the effective configuration, fetch the Delta jars."""

from __future__ import annotations

import json

import typer
import yaml

from persona.cli.app import app, settings
from spark_jobs.jars import resolve


def settings_dict(s) -> dict:
    data = json.loads(s.model_dump_json())
    data["home"] = str(s.home)
    return data


@app.command("config")
def show_config(
    as_yaml: bool = typer.Option(False, "--yaml", help="YAML (the conf/*.yaml layout) instead of JSON."),
) -> None:
    """Print the effective settings (defaults + file + environment)."""
    s = settings()
    data = settings_dict(s)
    if as_yaml:
        typer.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
        return
    data["warehouse_root"] = s.warehouse_root
    typer.echo(json.dumps(data, indent=2))


@app.command("fetch-jars")
def fetch_jars() -> None:
    """Resolve the Delta Lake jars from Maven Central into the local cache (install time only)."""
    for jar in resolve(settings().spark.jars_dir or None, quiet=True):
        typer.echo(str(jar))
