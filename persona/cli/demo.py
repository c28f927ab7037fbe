"""`persona demo`: the whole pipeline on embedded defaults (what `make demo` runs)."""

from __future__ import annotations

import typer

from core.errors import InputError
from persona.cli.app import app, settings, spark


@app.command("demo")
def demo(
    users: int = typer.Option(1_000, "--users", help="Users in the generated log."),
    days: int = typer.Option(40, "--days", help="Days of generated history."),
    backfill_days: int = typer.Option(30, "--backfill-days", help="As-of days to build, ending at the latest complete day."),
    seed: int = typer.Option(42, "--seed", help="Generator seed (same seed, same log)."),
    retrain: bool = typer.Option(False, "--retrain", help="Fit new encoder and fusion versions even if some exist."),
) -> None:
    """Generate -> ingest -> backfill -> train encoder -> embed -> fuse -> Feast apply ->
    materialize, then print one user's online profile, a training set and an analyst SQL
    result. Safe to re-run: every stage is idempotent."""
    from persona.demo.pipeline import DemoOptions, run_demo  # deferred: Spark, Feast, TensorFlow

    if users <= 0 or days <= 0 or not 1 <= backfill_days <= days:
        raise InputError("need users > 0, days > 0 and 1 <= backfill-days <= days")
    run_demo(spark(), settings(), DemoOptions(users=users, days=days, backfill_days=backfill_days, seed=seed, retrain=retrain))
