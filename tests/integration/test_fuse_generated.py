"""Fusion on ``persona generate`` data through the real behaviour job: segments vs the
generator's planted user groups, and ``explain`` on a planted user.

Input: ``generate(USERS, DAYS, SEED)`` written to bronze.events as ingest would write it
(conformed to the EVENTS schema; ingest's parsing and dedup are tested elsewhere and
cost ~100 s of fixed overhead here), ``run_build`` for the last day (the real
silver.user_behaviour), and embeddings from an encoder that knows nothing (random unit
vectors, dim 8): the trained encoder's embedding explains <= 3 % of the planted-group
variance per dimension on this data (measured, docs/fusion.md), so this
is what fusion gets from it, minus ~2.5 minutes of TensorFlow.

The planted groups (persona/demo/simulate.py) differ in rates, not volume: browsers (few
carts/purchases, long sessions), buyers (cart and purchase rates x3-4), night owls (~85 %
of sessions at night), explorers (searches x3, broad categories). Activity is lognormal
for everyone, so a segmentation that follows volume scores ARI ~0 (it did: 0.009 and
-0.0001 on 400 and 300 generated users through the whole pipeline).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import adjusted_rand_score

from core.settings import load_settings
from persona.demo.generator import generate
from persona.profiles.explain import explain_user, render_explanation
from spark_jobs import delta_io
from spark_jobs.gold import fuse
from spark_jobs.schemas import EVENTS, USER_EMBEDDINGS, conform
from spark_jobs.silver import behaviour

pytestmark = pytest.mark.integration

USERS, DAYS, SEED = 240, 30, 11
EMB_DIM = 8
GROUPS = 4
NIGHT_OWLS = 2  # persona.demo.generator.GROUP_NAMES index
ENV = {
    "PERSONA__SPARK__MASTER": "local[2]",
    "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4",
    # Around the 4 planted groups; Spark runs every BisectingKMeans iteration as a job.
    "PERSONA__FUSION__MIN_SEGMENTS": "3",
    "PERSONA__FUSION__MAX_SEGMENTS": "5",
    "PERSONA__FUSION__MAX_ITER": "8",
}


def _write_bronze(spark, settings, events: pd.DataFrame) -> None:
    path = settings.table("bronze.events")
    delta_io.create_if_missing(spark, path, EVENTS, ["event_date"])
    df = (spark.createDataFrame(events)
          .withColumn("event_date", F.to_date("event_ts"))
          .withColumn("source", F.lit("generic"))
          .withColumn("ingested_at", F.current_timestamp()))
    conform(df, EVENTS).write.format("delta").mode("append").save(path)


def _write_embeddings(spark, settings, day: dt.date, users: list[str]) -> None:
    rng = np.random.default_rng(SEED)
    emb = rng.normal(size=(len(users), EMB_DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ts = dt.datetime.combine(day, dt.time(23, 59, 59))
    rows = [(u, day, ts, ts, [float(v) for v in e], "know-nothing") for u, e in zip(users, emb)]
    df = spark.createDataFrame(rows, USER_EMBEDDINGS)
    delta_io.replace_where(df, settings.table("gold.user_embeddings"), USER_EMBEDDINGS, "as_of_date", day, day)


@pytest.fixture(scope="module")
def fused(spark, tmp_path_factory):
    settings = load_settings(home=tmp_path_factory.mktemp("fuse-generated"), environ=ENV)
    log = generate(users=USERS, days=DAYS, seed=SEED)
    events = log.events.copy()
    events["event_ts"] = events["event_ts"].dt.tz_convert("UTC")
    _write_bronze(spark, settings, events)
    day = events["event_ts"].max().date()
    behaviour.run_build(spark, settings, day)
    built = delta_io.read(spark, settings.table(fuse.BEHAVIOUR_TABLE), fuse.BEHAVIOUR_TABLE)
    users = sorted(r[0] for r in built.where(F.col("as_of_date") == F.lit(day)).select("user_id").collect())
    _write_embeddings(spark, settings, day, users)
    summary = fuse.run_fuse(spark, settings, as_of=day)
    prof = (fuse.read_profiles(spark, settings).where(F.col("as_of_date") == F.lit(day))
            .select("user_id", "segment_id").toPandas().set_index("user_id"))
    frame = prof.join(log.users.set_index("user_id")[["group"]], how="inner")
    return {"settings": settings, "day": day, "summary": summary, "frame": frame}


def test_segments_recover_the_planted_groups(fused):
    """ARI of segments vs planted groups, printed with the references it is judged by.

    Floor 0.6. References on these users' own truth (computed below): one group found and
    the other three lumped ~0.33; two groups merged ~0.71; one group split in half ~0.91;
    the volume-driven segmentation this replaced ~0.0 (0.009 / -0.0001 on 400 / 300
    generated users). Measured here: ~0.73 (5 segments: browsers split in two; 0.84 and
    0.95 on the larger logs of docs/fusion.md). 0.6 needs every group to be
    mostly in its own segment(s): a volume split, 2 segments or one group found fail.
    """
    f = fused["frame"]
    g = f["group"].to_numpy()
    seg = f["segment_id"].to_numpy()
    ari = adjusted_rand_score(g, seg)
    one_found = adjusted_rand_score(g, np.where(g == NIGHT_OWLS, 1, 0))
    merged = adjusted_rand_score(g, np.where(g == 3, 1, g))
    split = g.copy()
    zeros = np.flatnonzero(g == 0)
    split[zeros[: zeros.size // 2]] = GROUPS
    split_one = adjusted_rand_score(g, split)
    print(f"\nARI segments vs planted groups = {ari:.3f} on {len(f)} users (one group found "
          f"{one_found:.3f}, two merged {merged:.3f}, one split {split_one:.3f}); "
          f"n_segments {fused['summary']['n_segments']}")
    print(pd.crosstab(f["group"], f["segment_id"]))
    assert len(f) >= 0.9 * USERS and f.index.is_unique
    assert ari >= 0.6 > one_found + 0.2
    # Every planted group's users sit mostly in segments of their own.
    for grp in range(GROUPS):
        top = f.loc[f["group"] == grp, "segment_id"].value_counts()
        assert top.iloc[0] >= 0.5 * top.sum(), (grp, top.to_dict())


def test_volume_alone_does_not_decide_the_segment(fused, spark):
    """The activity volume (views_30d) explains little of the segmentation: the share of
    its variance between segments stays small (it was the splitting axis before)."""
    s, day = fused["settings"], fused["day"]
    b = (fuse.read_inputs(spark, s)[0].where(F.col("as_of_date") == F.lit(day))
         .select("user_id", "views_30d").toPandas().set_index("user_id"))
    f = fused["frame"].join(b)
    v = np.log1p(f["views_30d"].astype(float))
    between = v.groupby(f["segment_id"]).transform("mean").var() / v.var()
    print(f"share of log views_30d variance between segments: {between:.3f}")
    assert between < 0.5


def test_explain_names_the_planted_driver_of_a_night_owl(fused, spark):
    """Night owls are planted by one feature, the night share of their sessions: it is the
    top driver of the night owl with the most typical activity (median views_30d among
    them), and among the top three drivers of at least 2 of 3 other night owls."""
    s, day, f = fused["settings"], fused["day"], fused["frame"]
    owls = sorted(f.index[f["group"] == NIGHT_OWLS])
    b = (fuse.read_inputs(spark, s)[0].where(F.col("as_of_date") == F.lit(day))
         .where(F.col("user_id").isin(owls)).select("user_id", "views_30d").toPandas()
         .sort_values(["views_30d", "user_id"]))
    typical = b["user_id"].iloc[len(b) // 2]
    e = explain_user(spark, s, typical, day)
    print(render_explanation(e))
    assert e["drivers"][0]["feature"] == "night_share_30d"
    assert e["drivers"][0]["value"] > 0.5 and e["drivers"][0]["standardised"] > 1.0
    others = [u for u in owls if u != typical][:3]
    tops = [[d["feature"] for d in explain_user(spark, s, u, day)["drivers"][:3]] for u in others]
    print(tops)
    assert sum("night_share_30d" in t for t in tops) >= 2
