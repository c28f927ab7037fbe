"""Feast serving commands: `persona apply`, `materialize`, `get`, `serve`, `training-set`.

Input: the serving Delta tables and the declarations in feature_repo/. Output: Feast's
registry and online store under <home>/feast (or Redis / a SQL registry per config),
online feature rows (one per user) and point-in-time training sets (one per entity row).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from core.dates import parse_when
from core.errors import InputError
from persona.cli.app import app, settings, spark
from persona.progress import console, out, stage


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@app.command("apply")
def apply_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Register the Feast declarations (feature_repo/) and create the online tables (`feast apply`).

    Also writes <home>/feast/feature_store.yaml, so `feast -c feature_repo -f <that file>`
    (e.g. `feast ui`) sees the same store.
    """
    from persona.serving.store import apply  # deferred: Spark and Feast

    with stage("feast apply"):
        summary = apply(settings(), spark())
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title="feast apply", show_header=False)
    for key in ("entities", "views", "services", "deleted"):
        table.add_row(key, ", ".join(summary[key]) or "-")
    for key in ("registry", "online_store", "feature_store_yaml"):
        table.add_row(key, str(summary[key]))
    out.print(table)


@app.command("materialize")
def materialize_cmd(
    start: Optional[str] = typer.Option(None, "--start", help="Window start (YYYY-MM-DD or ISO time). Default: incremental."),
    end: Optional[str] = typer.Option(None, "--end", help="Window end (a bare date means the end of that day). Default: now or the newest snapshot."),
    views: Optional[List[str]] = typer.Option(None, "--view", help="Only this feature view (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Load the latest features per user into the online store (incremental by default).

    Without --start each view continues where its last run ended (a first run starts one
    ttl before the newest snapshot); with --start/--end exactly that window is loaded.
    """
    from persona.serving.materialize import materialize  # deferred: Spark and Feast

    s = settings()
    start_ts = parse_when(start)
    end_ts = parse_when(end, end_of_day=True)
    with stage(f"materialize into {s.feast.online_store}"):
        summary = materialize(s, start_ts, end_ts, spark(), views=views or None,
                              show_progress=not as_json)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"materialize ({summary['mode']})", show_header=False)
    table.add_row("window", f"{summary['start'] or 'since last run'} .. {summary['end']}")
    for view, n in sorted(summary["views"].items()):
        table.add_row(view, f"{n:,} users")
    if summary["rows_per_s"]:
        table.add_row("throughput", f"{summary['rows_per_s']:,.0f} rows/s ({summary['seconds']:.1f}s)")
    table.add_row("online store", summary["online_store"])
    out.print(table)


@app.command("get")
def get_cmd(
    users: List[str] = typer.Argument(..., help="One or more user ids."),
    service: str = typer.Option("recommender_v1", "--service", "-s", help="Feature service to read."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per user (one per line)."),
) -> None:
    """Print the online features of users (Feast SDK). Unknown users get nulls and a note."""
    from persona.serving.lookup import get_online, missing  # deferred: Feast

    rows = get_online(settings(), users, service)
    for row in rows:
        if missing(row):
            console.print(f"[yellow]note:[/] no online features for user {row['user_id']!r} "
                          "(unknown user, or not materialized yet): values are null")
    if as_json:
        for row in rows:
            typer.echo(json.dumps({k: _jsonable(v) for k, v in row.items()}))
        return
    for row in rows:
        table = Table(title=f"{row['user_id']} ({service})", show_header=True)
        table.add_column("feature")
        table.add_column("value")
        for key, value in row.items():
            if key == "user_id":
                continue
            if isinstance(value, list) and value and isinstance(value[0], float):
                text = "[" + ", ".join(f"{v:.3f}" for v in value[:8]) + (", ..." if len(value) > 8 else "") + f"] ({len(value)})"
            elif isinstance(value, float):
                text = f"{value:.4f}"
            else:
                text = "null" if value is None else str(value)
            table.add_row(key, text)
        out.print(table)


@app.command("serve")
def serve_cmd(
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default: settings feast.server_port, 6566)."),
) -> None:
    """Run an HTTP feature server on 127.0.0.1 speaking Feast's POST /get-online-features JSON.

    persona's lean server by default (settings feast.server: persona); feast.server: feast
    runs Feast's own FastAPI server instead.
    """
    from persona.serving.http import serve  # deferred: Feast

    s = settings()
    p = port or s.feast.server_port
    console.print(f"feature server on http://{s.feast.server_host}:{p} "
                  "(POST /get-online-features {\"feature_service\": \"recommender_v1\", "
                  "\"entities\": {\"user_id\": [...]}}); Ctrl-C stops it")
    serve(s, port=p)


@app.command("training-set")
def training_set_cmd(
    entities: str = typer.Option(..., "--entities", "-e", help="Entity file (csv/parquet/json) with user_id, event_timestamp."),
    out_path: str = typer.Option(..., "--out", "-o", help="Output directory (Parquet; CSV if it ends in .csv)."),
    service: str = typer.Option("recommender_v1", "--service", "-s", help="Feature service to join."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Point-in-time correct training set: each entity row gets the latest snapshot at or before its timestamp (within ttl)."""
    # deferred: Spark and Feast
    from persona.serving.lookup import training_set
    from persona.serving.store import require_registry

    if not Path(entities).exists():  # before paying for a Spark session
        raise InputError(f"entity file not found: {entities}")
    require_registry(settings())
    with stage(f"training set for {entities}"):
        summary = training_set(settings(), entities, out_path, service, spark())
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title="training set", show_header=False)
    table.add_row("rows", f"{summary['rows']:,}")
    table.add_row("columns", str(len(summary["columns"])))
    table.add_row("written to", summary["out"])
    out.print(table)
