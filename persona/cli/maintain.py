"""`persona forget` (delete users on request) and `persona maintain` (compaction, vacuum,
snapshot retention). Both run on every table of spark_jobs.schemas.TABLES and assume
nothing else writes to the tables meanwhile."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from persona.cli.app import app, settings, spark
from persona.progress import console, out, stage


def _forget_plan(s, n_users: int) -> str:
    """What forget will do, and which retention policies it overrides (the confirmation)."""
    from spark_jobs.schemas import TABLES  # deferred: pyspark, kept out of `persona --help`

    m = s.maintenance
    f = s.feast
    where = f.redis_connection if f.online_store == "redis" else str(s.feast_dir / "online_store.db")
    pseudo = " (ids HMAC-pseudonymised with the ingest key; raw ids matched too)" if s.ingest.pseudonymise else ""
    return "\n".join([
        f"Forget {n_users} user(s){pseudo}. This will:",
        "  1. delete their rows from every table (quarantine: raw records naming an id):",
        *[f"       {name}  {s.table(name)}" for name in TABLES],
        "  2. rewrite the files that held them and VACUUM these tables with 0 hours retention,",
        "     OVERRIDING delta.deletedFileRetentionDuration (Delta default 7 days) and",
        f"     maintenance.vacuum_retention_hours ({m.vacuum_retention_hours} h): time travel to",
        "     every earlier version of these tables ends;",
        "  3. checkpoint each table and delete its older Delta log files (commits, checksums,",
        "     checkpoints), OVERRIDING delta.logRetentionDuration (Delta default 30 days):",
        "     the table history before now is gone;",
        f"  4. delete their entries from the online store ({f.online_store}: {where}).",
        "Nothing may write to these tables while this runs.",
    ])


@app.command("forget")
def forget(
    users: List[str] = typer.Argument(..., help="User ids as they appear in the source files (raw ids)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    online: bool = typer.Option(True, "--online/--no-online", help="Also delete the users' online-store entries."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Delete users from every table, every older table version and the online store.

    Right to be forgotten: rows leave bronze, silver and gold; the files that held them are
    rewritten and vacuumed with 0 hours retention and the Delta log history is purged
    (overriding the retention policies of those tables); online-store entries are deleted.
    Asks for confirmation unless --yes. With ingest.pseudonymise on, the ids are
    pseudonymised with the same key first (raw ids are matched too).
    """
    from persona.serving.forget import forget_users  # deferred: Spark and Feast
    from spark_jobs.ops.forget import given_ids, target_ids

    s = settings()
    ids = given_ids(users)
    target_ids(s, ids)  # a missing HMAC key fails here, before any question or Spark
    if not yes:
        console.print(_forget_plan(s, len(ids)), markup=False, highlight=False, soft_wrap=True)
        typer.confirm("Continue?", abort=True, err=True)
    with stage(f"forget {len(ids)} user(s)"):
        summary = forget_users(spark(), s, ids, online=online,
                             progress=lambda name: console.print(f"  {name}"))
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    table = Table(title=f"forget: {summary['users']} user(s), {summary['rows_deleted']:,} rows removed")
    for col in ("table", "rows removed", "files rewritten", "files vacuumed", "log files removed", "version"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for t in summary["tables"]:
        if t["status"] != "ok":
            table.add_row(t["table"], "-", "-", "-", "-", t["status"])
            continue
        table.add_row(t["table"], f"{t['rows_deleted']:,}", str(t["files_rewritten"]), str(t["files_vacuumed"]),
                      str(t["log_files_removed"]), str(t["checkpoint_version"]))
    out.print(table)
    if not online:
        out.print("online store: skipped (--no-online)")
    for o in summary["online"]:
        out.print(f"online store {o['store']} ({o['where']}): {o['entries_deleted']} entries deleted")
    if online and not summary["online"]:
        out.print("online store: nothing materialized yet, nothing to delete")


@app.command("maintain")
def maintain(
    tables: Optional[List[str]] = typer.Option(None, "--table", "-t", help="Only this table (repeatable), e.g. silver.user_behaviour."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Compact small files, VACUUM by the retention policy, drop old snapshots.

    OPTIMIZE each table, VACUUM with maintenance.vacuum_retention_hours, and delete
    behaviour/sequence/embedding/profile snapshots older than
    maintenance.snapshot_retention_days (0 keeps all). Safe to run while nothing writes to
    the tables; time travel to versions older than the retention window ends.
    """
    from spark_jobs.ops.maintain import run_maintain  # deferred: pyspark, kept out of `persona --help`

    s = settings()
    m = s.maintenance
    policy = (f"vacuum retention {m.vacuum_retention_hours} h, snapshot retention "
              f"{m.snapshot_retention_days or 'all'}{' days' if m.snapshot_retention_days else ''}, "
              f"optimize tables with >= {m.optimize_min_files} files")
    with stage(f"maintain ({policy})"):
        summary = run_maintain(spark(), s, tables or None, progress=lambda name: console.print(f"  {name}"))
    if as_json:
        out.print_json(json.dumps(summary, default=str))
        return
    table = Table(title="maintain")
    for col in ("table", "snapshot rows removed", "files before", "compacted", "written", "files after",
                "vacuumed", "MB after", "notes"):
        table.add_column(col, justify="left" if col in ("table", "notes") else "right")
    for t in summary["tables"]:
        if t["status"] != "ok":
            table.add_row(t["table"], "-", "-", "-", "-", "-", "-", "-", t["status"])
            continue
        removed = f"{t['snapshot_rows_deleted']:,}"
        if t["snapshots_before"]:
            removed += f" (< {t['snapshots_before']})"
        table.add_row(t["table"], removed, str(t["files_before"]), str(t["files_compacted"]), str(t["files_written"]),
                      str(t["files_after"]), str(t["files_vacuumed"]), f"{t['bytes_after'] / 1e6:.2f}",
                      "; ".join(t["notes"]))
    out.print(table)
