"""Encoder commands: ``persona train-encoder`` and ``persona embed``.

``train-encoder`` reads silver.user_sequences up to a day, trains a new versioned encoder
under ``<home>/models/encoder/<version>/`` and prints its evaluation against the two
baselines. ``embed`` applies an encoder version in Spark and writes gold.user_embeddings.
The job module imports pyspark: it is imported inside each command so that ``persona
--help`` and the other commands start without it.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from persona.cli.app import app, settings, spark
from persona.progress import console, stage


def _echo(summary: dict) -> None:
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("train-encoder")
def train_encoder(
    as_of: Optional[str] = typer.Option(
        None, "--as-of", help="Train on each user's sequence up to this day (YYYY-MM-DD). Default: latest day."
    ),
) -> None:
    """Train the sequence encoder (next-category prediction) on silver.user_sequences; save
    a new version with metrics.json (hr@10 / ndcg@10 vs popularity and user-top baselines)
    and TensorBoard logs under <home>/models/encoder/<version>/."""
    from spark_jobs.gold import embed as job  # deferred: pyspark

    s = settings()
    with stage("train encoder"):
        summary = job.train(spark(), s, as_of=as_of, log=lambda msg: console.print(f"  {msg}"))
    _echo(summary)


@app.command("embed")
def embed(
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Day to embed (YYYY-MM-DD). Default: latest sequences day."),
    start: Optional[str] = typer.Option(None, "--start", help="First day of a range to embed (backfill)."),
    end: Optional[str] = typer.Option(None, "--end", help="Last day of a range to embed (backfill)."),
    version: Optional[str] = typer.Option(None, "--version", help="Encoder version. Default: latest."),
) -> None:
    """Apply the encoder in Spark to silver.user_sequences and write gold.user_embeddings
    (one L2-normalised vector per user per day; re-running a day replaces that day)."""
    from spark_jobs.gold import embed as job  # deferred: pyspark

    s = settings()
    with stage("embed users"):
        summary = job.run(spark(), s, as_of=as_of, start=start, end=end, version=version)
    _echo(summary)
