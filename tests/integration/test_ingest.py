"""Ingest end to end with real Spark and Delta: real samples, re-ingest, quarantine."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from spark_jobs.bronze.ingest import run_ingest

pytestmark = pytest.mark.integration


def _table(spark, settings, name):
    return spark.read.format("delta").load(settings.table(name))


def _content_hash(df) -> str:
    cols = sorted(c for c in df.columns if c != "ingested_at")
    row = df.select(F.sha2(F.concat_ws("|", F.collect_list(F.sha2(F.concat_ws("\u241f", *[F.coalesce(F.col(c).cast("string"), F.lit("<null>")) for c in cols]), 256))), 256)).collect()
    # collect_list order is not defined: hash the sorted row hashes instead.
    hashes = sorted(r[0] for r in df.select(F.sha2(F.concat_ws("\u241f", *[F.coalesce(F.col(c).cast("string"), F.lit("<null>")) for c in cols]), 256)).collect())
    import hashlib

    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def test_taobao_sample_exact_counts_and_reingest_is_a_no_op(spark, settings, shared_data):
    path = str(shared_data / "taobao_userbehavior_slice.csv")
    first = run_ingest(spark, settings, path, "taobao")
    assert first["read"] == 110_300
    assert first["accepted"] == 110_300 and first["quarantined"] == 0
    events = _table(spark, settings, "bronze.events")
    counts = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    assert counts == {"view": 98_361, "cart": 6_063, "fav": 3_383, "purchase": 2_493}
    assert events.select("user_id").distinct().count() == 66_454
    before = _content_hash(events)
    version = spark.sql(f"DESCRIBE HISTORY delta.`{settings.table('bronze.events')}`").count()

    second = run_ingest(spark, settings, path, "taobao")
    assert second["accepted"] == 0 and second["duplicates_skipped"] == 110_300
    after = _table(spark, settings, "bronze.events")
    assert after.count() == 110_300
    assert _content_hash(after) == before
    assert spark.sql(f"DESCRIBE HISTORY delta.`{settings.table('bronze.events')}`").count() >= version


def test_rees46_sample_exact_counts(spark, settings, shared_data):
    summary = run_ingest(spark, settings, str(shared_data / "rees46_2019-10_sample.csv"), "rees46")
    assert summary["accepted"] == 17_434 and summary["quarantined"] == 0
    events = _table(spark, settings, "bronze.events")
    counts = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    assert counts == {"view": 17_055, "cart": 165, "purchase": 214}
    # 19-digit category ids survive as exact strings.
    assert events.where(F.col("category_id") == "2103807459595387724").count() > 0
    assert events.select("user_id").distinct().count() == 4_504
    assert events.select("session_id").distinct().count() == 5_066


def test_every_quarantine_reason_lands_with_raw_record_and_source(spark, settings, tmp_path):
    good = "user_id,item_id,category_id,event_type,event_ts,price,quantity\n"
    rows = {
        None: "u1,i1,c1,view,2024-01-01T10:00:00Z,1.0,",
        "missing_user_id": ",i1,c1,view,2024-01-01T10:00:00Z,1.0,",
        "missing_item_id": "u1,,c1,view,2024-01-01T10:00:00Z,1.0,",
        "unparseable_timestamp": "u1,i1,c1,view,tomorrow,1.0,",
        "future_timestamp": "u1,i1,c1,view,2199-01-01T00:00:00Z,1.0,",
        "timestamp_too_old": "u1,i1,c1,view,1970-01-02T00:00:00Z,1.0,",
        "unknown_event_type": "u1,i1,c1,teleport,2024-01-01T10:00:00Z,1.0,",
        "negative_price": "u1,i1,c1,purchase,2024-01-01T10:00:00Z,-3.0,1",
        "unparseable_price": "u1,i1,c1,purchase,2024-01-01T10:00:00Z,cheap,1",
        "unparseable_quantity": "u1,i1,c1,purchase,2024-01-01T10:00:00Z,3.0,two",
        "invalid_quantity": "u1,i1,c1,purchase,2024-01-01T10:00:00Z,3.0,-1",
        "malformed_line": "u1,i1,c1,view",
    }
    f = tmp_path / "events.csv"
    f.write_text(good + "\n".join(rows.values()) + "\n")
    summary = run_ingest(spark, settings, str(f), "generic")
    assert summary["accepted"] == 1
    expected = {k: 1 for k in rows if k is not None}
    assert summary["quarantined_by_reason"] == expected
    q = _table(spark, settings, "bronze.events_quarantine").collect()
    assert {r["reason"]: r["raw_record"] for r in q} == {k: v for k, v in rows.items() if k is not None}
    assert all(r["source_file"].endswith("events.csv") and r["source_format"] == "generic" for r in q)
    # Re-ingesting does not duplicate quarantine rows either.
    run_ingest(spark, settings, str(f), "generic")
    assert _table(spark, settings, "bronze.events_quarantine").count() == len(expected)
    assert _table(spark, settings, "bronze.events").count() == 1


def test_generated_log_ingests_completely_in_every_format(spark, settings, tmp_path):
    from persona.demo.generator import generate

    log = generate(users=40, days=4, seed=3)
    n = len(log.events)
    log.write(tmp_path / "pq", "parquet")
    log.write(tmp_path / "csv", "csv")
    log.write(tmp_path / "json", "json")
    first = run_ingest(spark, settings, str(tmp_path / "pq" / "events"), "generic")
    assert first["read"] == n and first["accepted"] == n and first["quarantined"] == 0
    events = _table(spark, settings, "bronze.events")
    # The source's event ids are kept, so the same log in another format is all duplicates.
    assert {r[0] for r in events.select("event_id").collect()} == set(log.events["event_id"])
    for fmt in ("csv", "json"):
        again = run_ingest(spark, settings, str(tmp_path / fmt / "events"), "generic")
        assert again["read"] == n and again["quarantined"] == 0, fmt
        assert again["accepted"] == 0 and again["duplicates_skipped"] == n, fmt
    # Field values survive the text formats exactly (queries, prices, UTC times).
    got = events.toPandas().set_index("event_id").sort_index()
    want = log.events.set_index("event_id").sort_index()
    assert (got["user_id"] == want["user_id"]).all()
    assert (got["event_type"] == want["event_type"]).all()
    assert (got["event_ts"].dt.tz_localize("UTC") == want["event_ts"]).all()
