"""Idempotence across every stage: running a job twice on the same inputs leaves identical
table content (a hash of the sorted rows without compute-time columns, not a row count).

Starts from a copy of the session's local pipeline run (tests/support/pipeline.py
``baseline``: ingest, backfill, train, embed, fuse, Feast apply + materialize into SQLite)
and runs each job again. Each re-run must really rewrite (the table version advances
where the job replaces partitions) and leave the content unchanged. Training is the one
job that is not re-run: it writes no table, it adds a model version by design; the
jobs that apply a model (embed, fuse) are.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from tests.support.pipeline import (
    SERVICE,
    baseline,
    baseline_dir,
    canon_rows,
    make_settings,
    table_hash,
    table_version,
    warehouse_hashes,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def first(spark, tmp_path_factory):
    return baseline(spark, baseline_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def home(first, tmp_path_factory) -> Path:
    """A copy of the baseline home: these tests re-run jobs on it."""
    dst = tmp_path_factory.mktemp("idem") / "home"
    shutil.copytree(first["home"], dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def settings_(home):
    return make_settings(home)


def _path(home: Path, table: str) -> Path:
    layer, name = table.split(".")
    return home / "warehouse" / layer / name


def _same_after(home: Path, tables: list[str], run, must_rewrite: bool = True) -> dict:
    """Run ``run()``; assert each table's content hash is unchanged (and, with
    ``must_rewrite``, that a new version was committed). Returns run()'s result."""
    before = {t: (table_hash(_path(home, t)), table_version(_path(home, t))) for t in tables}
    result = run()
    for t in tables:
        h, v = before[t]
        assert table_hash(_path(home, t)) == h, f"{t} changed on re-run"
        if must_rewrite:
            assert table_version(_path(home, t)) > v, f"{t}: the re-run wrote nothing (vacuous check)"
    return result


def test_the_copy_starts_equal_to_the_first_run(home, first):
    assert warehouse_hashes(home) == first["hashes"]


def test_ingest_twice_adds_nothing(spark, settings_, home, first, tmp_path):
    from spark_jobs.bronze.ingest import run_ingest

    s = _same_after(home, ["bronze.events"], lambda: run_ingest(spark, settings_, first["input"], "generic"),
                    must_rewrite=False)
    assert s["accepted"] == 0 and s["duplicates_skipped"] == s["read"] > 5000

    # Quarantined rows are merged on a record hash: a bad file ingested twice is
    # quarantined once.
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "event_id,user_id,item_id,event_type,event_ts\n"
        "b1,u1,i1,teleport,2024-01-03T10:00:00Z\n"
        "b2,,i2,view,2024-01-03T10:00:00Z\n"
        "b3,u3,i3,view,not-a-time\n"
    )
    q = "bronze.events_quarantine"
    first_bad = run_ingest(spark, settings_, str(bad), "generic")
    assert first_bad["quarantined"] == 3 and first_bad["accepted"] == 0
    assert table_hash(_path(home, q)).startswith("3:")
    again = _same_after(home, [q, "bronze.events"], lambda: run_ingest(spark, settings_, str(bad), "generic"),
                        must_rewrite=False)
    assert again["quarantined"] == 3 and again["accepted"] == 0


def test_backfill_twice_and_forced(spark, settings_, home, first):
    from spark_jobs.silver import behaviour

    start, end = dt.date.fromisoformat(first["first_day"]), dt.date.fromisoformat(first["last_day"])
    silver = ["silver.user_sequences", "silver.user_behaviour"]
    s = _same_after(home, silver, lambda: behaviour.run_backfill(spark, settings_, start, end), must_rewrite=False)
    assert s["days_built"] == 0  # resumable: nothing stale, nothing redone
    s = _same_after(home, silver, lambda: behaviour.run_backfill(spark, settings_, start, end, force=True))
    assert s["days_built"] == 10


def test_build_today_twice(spark, settings_, home, first):
    from spark_jobs.silver import behaviour

    end = dt.date.fromisoformat(first["last_day"])
    s = _same_after(home, ["silver.user_sequences", "silver.user_behaviour"],
                    lambda: behaviour.run_build(spark, settings_, end))
    assert s["as_of"] == end.isoformat()


def test_embed_twice(spark, settings_, home, first):
    from spark_jobs.gold import embed

    s = _same_after(home, ["gold.user_embeddings"],
                    lambda: embed.run(spark, settings_, start=first["first_day"], end=first["last_day"]))
    assert s["rows"] == int(first["hashes"]["gold.user_embeddings"].split(":")[0])


def test_fuse_twice(spark, settings_, home, first):
    from spark_jobs.gold import fuse

    s = _same_after(home, ["gold.user_profiles"],
                    lambda: fuse.run_fuse(spark, settings_, as_of=first["last_day"]))
    assert not s["fitted"] and s["fusion_version"] == first["fuse"]["fusion_version"]


def test_feast_apply_and_materialize_twice(spark, settings_, home, first):
    from persona.serving.lookup import get_online
    from persona.serving.materialize import materialize
    from persona.serving.store import apply

    a1 = apply(settings_, spark=spark)
    a2 = apply(settings_, spark=spark)
    assert (a2["views"], a2["services"]) == (a1["views"], a1["services"]) and not a2["deleted"]
    # An explicit window re-writes every user's latest row (incremental would skip).
    start = dt.datetime.fromisoformat(first["first_day"]).replace(tzinfo=dt.timezone.utc) - dt.timedelta(days=1)
    end = dt.datetime.fromisoformat(first["last_day"]).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    for _ in range(2):
        m = materialize(settings_, start, end, spark=spark, show_progress=False)
        assert m["rows"] and m["rows"] >= 60
        assert canon_rows(get_online(settings_, first["users"], service=SERVICE)) == first["online"]
