"""Encoder end to end on Spark: generated log -> sequences job -> train -> embed job.

Built once per module: a planted-preference log (persona.demo.generator), turned into
silver.user_sequences by spark_jobs.silver.sequences for two as-of days, an encoder trained by
the train job, and gold.user_embeddings written by the embed job.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from core.errors import InputError, NotBuiltError
from encoders import data, predict
from persona.demo.generator import generate
from spark_jobs import delta_io
from spark_jobs.gold import embed as job
from spark_jobs.gold.embed import resolve_model, training_sequences
from spark_jobs.schemas import USER_EMBEDDINGS, USER_SEQUENCES
from spark_jobs.silver.sequences import user_sequences

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytestmark = pytest.mark.integration

DAYS = 4
START = dt.date(2024, 3, 1)
LAST = START + dt.timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def built(spark, module_settings):
    s = module_settings
    # Small but enough users to learn the planted structure in a few epochs; 20-event
    # sequences keep the GRU cheap (the code path is the same for any length).
    s.behaviour.sequence_length = 20
    for key, value in dict(epochs=8, batch_size=32, learning_rate=0.005, item_min_count=5,
                           validation_share=0.4, seed=7).items():
        setattr(s.encoder, key, value)

    events = generate(1200, DAYS, seed=11, start=START).events
    events = events.assign(
        event_date=events["event_ts"].dt.date,
        ingested_at=pd.Timestamp("2024-04-01", tz="UTC"),
    )[["event_id", "user_id", "item_id", "category_id", "event_type", "event_ts", "event_date", "ingested_at"]]
    sdf = spark.createDataFrame(events)
    seqs = user_sequences(sdf, LAST - dt.timedelta(days=1), LAST, s.behaviour.sequence_length, partitions=4)
    delta_io.replace_where(seqs, s.table(job.SEQUENCES), USER_SEQUENCES, "as_of_date",
                           LAST - dt.timedelta(days=1), LAST)

    conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    conf_before = spark.conf.get(conf_key)
    trained = job.train(spark, s)
    embedded = job.run(spark, s)
    return {"settings": s, "trained": trained, "embedded": embedded, "events": events,
            "conf_before": conf_before, "conf_after": spark.conf.get(conf_key)}


def _gold(spark, settings, day=LAST) -> pd.DataFrame:
    return (spark.read.format("delta").load(settings.table("gold.user_embeddings"))
            .where(F.col("as_of_date") == F.lit(day)).toPandas())


def _sequences(spark, settings, day=LAST) -> pd.DataFrame:
    return (spark.read.format("delta").load(settings.table("silver.user_sequences"))
            .where(F.col("as_of_date") == F.lit(day)).toPandas())


def test_encoder_beats_both_baselines_on_planted_log(built):
    t = built["trained"]
    assert t["as_of"] == LAST.isoformat()
    assert t["users"] == built["events"]["user_id"].nunique()
    assert t["evaluated_users"] > 400
    print({k: v for k, v in t.items() if "@" in k})
    assert t["hr@10"] > t["hr@10_popularity"] + 0.2
    assert t["hr@10"] > t["hr@10_user_top"]
    assert t["ndcg@10"] > t["ndcg@10_popularity"]
    assert t["ndcg@10"] > t["ndcg@10_user_top"]


def test_embeddings_table(spark, built):
    s = built["settings"]
    e = built["embedded"]
    assert e["start"] == e["end"] == LAST.isoformat()
    assert e["encoder_version"] == built["trained"]["encoder_version"]
    table = spark.read.format("delta").load(s.table("gold.user_embeddings"))
    # Names and types; Delta keeps array elements nullable whatever the writer says.
    assert [(f.name, f.dataType.simpleString()) for f in table.schema.fields] == [
        (f.name, f.dataType.simpleString()) for f in USER_EMBEDDINGS.fields]
    gold, seqs = _gold(spark, s), _sequences(spark, s)
    assert e["rows"] == len(gold) == len(seqs) and gold["user_id"].is_unique
    emb = np.stack(gold["user_emb"].to_numpy())
    assert emb.shape == (len(gold), s.encoder.embedding_dim)
    assert len(seqs["item_ids"].iloc[0]) == s.behaviour.sequence_length
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert (gold["encoder_version"] == e["encoder_version"]).all()
    merged = gold.merge(seqs, on="user_id", suffixes=("", "_seq"))
    assert (merged["event_timestamp"] == merged["event_timestamp_seq"]).all()


def test_spark_path_equals_numpy_path(spark, built):
    s = built["settings"]
    seqs = _sequences(spark, s)
    local = predict.embed(resolve_model(s), data.from_frame(seqs))
    gold = _gold(spark, s).set_index("user_id").loc[seqs["user_id"]]
    np.testing.assert_allclose(np.stack(gold["user_emb"].to_numpy()), local, atol=1e-5)


def test_rerun_replaces_the_day_and_other_udf_agrees(spark, built):
    s = built["settings"]
    before = _gold(spark, s).set_index("user_id").sort_index()
    default = s.encoder.udf
    # The other UDF form (mapInPandas when the default is mapInArrow) gives the same vectors.
    s.encoder.udf = "pandas" if default == "arrow" else "arrow"
    try:
        again = job.run(spark, s, as_of=LAST.isoformat())
    finally:
        s.encoder.udf = default
    after = _gold(spark, s).set_index("user_id").sort_index()
    assert again["rows"] == len(before) == len(after)
    np.testing.assert_allclose(np.stack(after["user_emb"].to_numpy()), np.stack(before["user_emb"].to_numpy()),
                               atol=1e-6)


def test_session_conf_left_as_found(built):
    assert built["conf_after"] == built["conf_before"]


def test_training_reads_latest_row_per_user_up_to_as_of(spark, built):
    s = built["settings"]
    pdf, rng = training_sequences(spark, s, as_of=LAST - dt.timedelta(days=1))
    assert rng["as_of"] == (LAST - dt.timedelta(days=1)).isoformat()
    assert pdf["user_id"].is_unique
    assert (pdf["as_of_date"] <= LAST - dt.timedelta(days=1)).all()


def test_clear_errors(spark, built):
    s = built["settings"]
    with pytest.raises(NotBuiltError, match="no encoder version 'nope'"):
        job.run(spark, s, version="nope")
    with pytest.raises(InputError, match="must be a date"):
        job.run(spark, s, as_of="yesterday")
    with pytest.raises(NotBuiltError, match="no sequences"):
        job.run(spark, s, as_of="2020-01-01")
