"""Oracle test: every column of every row of silver.user_behaviour and
silver.user_sequences, after a one-pass backfill of 60 as-of days, equals what DuckDB
computes naively (each as-of day joined to its own 30-day window of raw events).

The log: the project's generator (hundreds of users, 60 days, every event type, users
with multi-day gaps), with half the users' session ids removed (so the 30-minute idle
rule is exercised), a few null categories, unpriced purchases and quantities > 1.
Counts must match exactly, rates to 1e-9 relative.
"""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import numpy as np
import pandas as pd
import pytest

from spark_jobs.silver import behaviour
from spark_jobs.schemas import EVENTS, USER_BEHAVIOUR
from tests.support.behaviour_oracle import behaviour_sql

pytestmark = pytest.mark.integration

START = dt.date(2024, 1, 1)
DAYS = 60


def write_bronze(spark, settings, events: pd.DataFrame, ingested_at=None, mode="append") -> None:
    """Write a generic-layout pandas frame straight into bronze.events (no ingest job)."""
    from spark_jobs.schemas import conform

    pdf = events.copy()
    pdf["event_ts"] = pd.to_datetime(pdf["event_ts"], utc=True)
    pdf["event_date"] = pdf["event_ts"].dt.date
    pdf["source"] = "test"
    if "ingested_at" not in pdf:
        pdf["ingested_at"] = pd.Timestamp(ingested_at or "2024-06-01", tz="UTC")
    pdf["quantity"] = pdf["quantity"].astype("Int32")
    for c in ("price",):
        pdf[c] = pdf[c].astype(float)
    cols = [f.name for f in EVENTS.fields]
    df = spark.createDataFrame(pdf[cols], EVENTS)
    conform(df, EVENTS).write.format("delta").mode(mode).partitionBy("event_date").save(
        settings.table("bronze.events")
    )


def make_log(users: int = 200, days: int = DAYS, seed: int = 11) -> pd.DataFrame:
    from persona.demo.generator import generate

    ev = generate(users=users, days=days, seed=seed, start=START).events.copy()
    rng = np.random.default_rng(seed)
    uids = ev["user_id"].str[1:].astype(int)
    ev.loc[uids % 2 == 0, "session_id"] = None  # gap rule for half the users
    n = len(ev)
    ev.loc[rng.random(n) < 0.01, "category_id"] = None
    buy = ev["event_type"] == "purchase"
    ev.loc[buy & (rng.random(n) < 0.2), "quantity"] = 3
    ev.loc[buy & (rng.random(n) < 0.05), "price"] = np.nan
    # Idle-gap sessions crossing midnight (one spans three days), for users without
    # session ids: the roll-up joins them across daily partials.
    plant = []
    no_sid_users = sorted(ev.loc[uids % 2 == 0, "user_id"].unique())[:6]
    for k, user in enumerate(no_sid_users):
        base = ev[ev["user_id"] == user].iloc[0]
        day0 = pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=5 + 7 * k)
        times = [day0 - pd.Timedelta(minutes=10), day0 + pd.Timedelta(minutes=15)]
        if k == 0:  # every 20 minutes for two days and a bit: one session over three dates
            times = [day0 - pd.Timedelta(minutes=10) + pd.Timedelta(minutes=20 * i) for i in range(150)]
        for i, t in enumerate(times):
            row = base.copy()
            row["event_id"] = f"midnight-{k}-{i}"
            row["event_ts"] = t
            plant.append(row)
    ev = pd.concat([ev, pd.DataFrame(plant)], ignore_index=True)
    # Ingested the morning after, so created_timestamp varies by window.
    ev["ingested_at"] = (
        pd.to_datetime(ev["event_ts"], utc=True).dt.normalize() + pd.Timedelta(hours=30)
    )
    return ev


def oracle_behaviour(events: pd.DataFrame, as_of_days: list[dt.date], settings) -> pd.DataFrame:
    """The features, straight from raw events, one 30-day window per as-of day (DuckDB)."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    ev = events.copy()
    ev["event_ts"] = pd.to_datetime(ev["event_ts"], utc=True)
    ev["price"] = ev["price"].astype(float)
    ev["quantity"] = ev["quantity"].astype("float")
    con.register("raw", ev)
    con.register("days", pd.DataFrame({"as_of": pd.to_datetime(as_of_days)}))
    return con.execute(behaviour_sql("raw", "days", settings)).df().rename(columns={"as_of": "as_of_date"})


def oracle_sequences(events: pd.DataFrame, as_of_days: list[dt.date], length: int) -> pd.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    ev = events[["user_id", "event_id", "event_ts", "item_id", "category_id", "event_type"]].copy()
    ev["event_ts"] = pd.to_datetime(ev["event_ts"], utc=True)
    con.register("raw", ev)
    con.register("days", pd.DataFrame({"as_of": pd.to_datetime(as_of_days)}))
    return con.execute(f"""
    WITH w AS (
      SELECT CAST(days.as_of AS DATE) AS as_of, r.*, epoch_us(r.event_ts) AS us FROM days
      JOIN raw r ON CAST(r.event_ts AS DATE) BETWEEN CAST(days.as_of AS DATE) - 29 AND CAST(days.as_of AS DATE)),
    k AS (SELECT *, row_number() OVER (PARTITION BY user_id, as_of ORDER BY us DESC, event_id DESC) AS back
          FROM w),
    s AS (SELECT *, us - lag(us) OVER (PARTITION BY user_id, as_of ORDER BY us, event_id) AS gap
          FROM k WHERE back <= {length})
    SELECT user_id, as_of AS as_of_date,
      list(coalesce(item_id, '') ORDER BY us, event_id) AS item_ids,
      list(coalesce(category_id, '') ORDER BY us, event_id) AS category_ids,
      list(event_type ORDER BY us, event_id) AS event_types,
      list(coalesce(gap, 0) / 1e6 ORDER BY us, event_id) AS gaps,
      count(*) AS seq_len
    FROM s GROUP BY ALL
    """).df()


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _same(a, b, name) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


@pytest.fixture(scope="module")
def world(spark, module_settings):
    events = make_log()
    write_bronze(spark, module_settings, events)
    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    summary = behaviour.run_backfill(spark, module_settings, days[0], days[-1])
    got = spark.read.format("delta").load(module_settings.table("silver.user_behaviour")).toPandas()
    seqs = spark.read.format("delta").load(module_settings.table("silver.user_sequences")).toPandas()
    return {"events": events, "days": days, "summary": summary, "got": got, "seqs": seqs}


def test_log_covers_what_the_oracle_must_check(world):
    ev = world["events"]
    assert set(ev["event_type"]) == {"view", "click", "search", "cart", "fav", "purchase"}
    assert ev["user_id"].nunique() >= 200
    assert ev["session_id"].isna().any() and ev["session_id"].notna().any()
    # users with gaps of several days between active days
    d = pd.to_datetime(ev["event_ts"], utc=True).dt.normalize()
    gaps = d.groupby(ev["user_id"]).apply(lambda s: s.drop_duplicates().sort_values().diff().max())
    assert (gaps >= pd.Timedelta(days=4)).any()
    # idle-gap sessions crossing midnight (consecutive events of a user without session
    # id, on different dates, at most 30 minutes apart)
    g = ev[ev["session_id"].isna()].assign(ts=pd.to_datetime(ev["event_ts"], utc=True)).sort_values(["user_id", "ts"])
    same_user = g["user_id"].eq(g["user_id"].shift())
    crossing = same_user & (g["ts"].dt.date != g["ts"].shift().dt.date) & (g["ts"] - g["ts"].shift() <= pd.Timedelta(minutes=30))
    assert crossing.sum() >= 6
    assert world["summary"]["days_built"] == DAYS
    assert len(world["summary"]["passes"]) == 2  # 60 days in passes of 30


def test_every_column_of_every_row_matches_duckdb(world, module_settings):
    got = world["got"]
    want = oracle_behaviour(world["events"], world["days"], module_settings)
    got["as_of_date"] = pd.to_datetime(got["as_of_date"]).dt.date
    want["as_of_date"] = pd.to_datetime(want["as_of_date"]).dt.date
    key = ["user_id", "as_of_date"]
    assert not got.duplicated(key).any()
    assert len(got) == len(want) > 5000
    m = got.merge(want, on=key, suffixes=("", "_want"), how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), m.loc[m["_merge"] != "both", key + ["_merge"]].head()
    cols = [f.name for f in USER_BEHAVIOUR.fields if f.name not in key]
    bad = {}
    for c in cols:
        a, b = m[c], m[c + "_want"]
        if c in ("event_timestamp", "created_timestamp"):
            a = pd.to_datetime(a, utc=True)
            b = pd.to_datetime(b, utc=True)
            ok = (a == b).to_numpy()
        elif c == "top_categories_30d":
            ok = np.array([list(x) == list(y) for x, y in zip(a, b)])
        else:
            ok = np.array([_same(x, y, c) for x, y in zip(a.astype(object), b.astype(object))])
        if not ok.all():
            bad[c] = m.loc[~ok, key + [c, c + "_want"]].head(3).to_dict("records")
    assert not bad, bad


def test_sequences_match_duckdb(world, module_settings):
    L = module_settings.behaviour.sequence_length
    seqs = world["seqs"]
    want = oracle_sequences(world["events"], world["days"], L)
    seqs["as_of_date"] = pd.to_datetime(seqs["as_of_date"]).dt.date
    want["as_of_date"] = pd.to_datetime(want["as_of_date"]).dt.date
    assert len(seqs) == len(want) == len(world["got"])
    m = seqs.merge(want, on=["user_id", "as_of_date"], suffixes=("", "_want"))
    assert len(m) == len(want)
    assert (m["seq_len"] == m["seq_len_want"]).all()
    assert m["seq_len"].max() == L and m["seq_len"].min() >= 1
    for row in m.itertuples():
        n = row.seq_len
        for col, want_col, pad in (("item_ids", "item_ids_want", ""), ("category_ids", "category_ids_want", ""),
                                   ("event_types", "event_types_want", "")):
            got_list = list(getattr(row, col))
            assert len(got_list) == L
            assert got_list[:n] == list(getattr(row, want_col)), (row.user_id, row.as_of_date, col)
            assert got_list[n:] == [pad] * (L - n)
        gaps = np.asarray(row.gap_seconds, dtype=float)
        assert len(gaps) == L and gaps[0] == 0.0 and (gaps[n:] == 0.0).all()
        np.testing.assert_allclose(gaps[:n], np.asarray(row.gaps, dtype=np.float32), rtol=1e-6)
    eot = pd.to_datetime(seqs["event_timestamp"])
    assert (eot.dt.time == dt.time(23, 59, 59, 999999)).all()
