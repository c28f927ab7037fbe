"""Synthetic silver.user_behaviour + gold.user_embeddings with planted structure, for the
fusion and report tests: the real tables are built by other jobs; these keep the tests
fast and the truth known. No tests here (test_fuse_pipeline.py checks the generator).

Planted truth:
- four user groups in a two-level hierarchy, the shape BisectingKMeans looks for:
  non-buyers {0 browsers (views, distinct items), 1 searchers (searches, distinct
  queries)} and buyers {2 day buyers, 3 night owls (night share, sessions)}; buying
  separates the halves (carts, purchases, spend, rates: many features), the second
  level separates within them; embeddings carry the same hierarchy (a centre per half
  plus a smaller offset per group) with noise;
- one planted user (``PLANTED_USER``, a browser) with an extreme ``searches_7d``
  (PLANTED_VALUE): the unusual value ``explain`` must name;
- day 2 = day 1 with fresh noise, except ``night_share_30d`` shifted up for everyone
  (``DRIFTED_FEATURE``): the drift the report must flag.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from core.settings import load_settings
from spark_jobs.gold.fuse import run_fuse
from spark_jobs.schemas import USER_BEHAVIOUR, USER_EMBEDDINGS

DAY1 = dt.date(2024, 3, 10)
DAY2 = dt.date(2024, 3, 11)
GROUPS = 4
EMB_DIM = 8
ENCODER = "enc-test-1"
PLANTED_USER = "u0000"
PLANTED_DRIVER = "searches_7d"
# Far beyond every group even as searches per view (the fusion input is a log rate): the
# searchers' ~2 per view vs ~200 per view here.
PLANTED_VALUE = 20_000
DRIFTED_FEATURE = "night_share_30d"

# Poisson means per group for the 30-day counts the others derive from.
_RATES = {
    #              views searches carts favs purchases sessions
    0: np.array([400.0, 4.0, 1.0, 4.0, 0.1, 12.0]),
    1: np.array([60.0, 120.0, 1.0, 2.0, 0.1, 10.0]),
    2: np.array([90.0, 8.0, 30.0, 8.0, 12.0, 12.0]),
    3: np.array([90.0, 8.0, 30.0, 8.0, 12.0, 40.0]),
}
_NIGHT = {0: 0.08, 1: 0.08, 2: 0.06, 3: 0.7}


def make_users(n_per_group: int = 120, seed: int = 1) -> dict:
    """Per-user latent draws (the same users on every day)."""
    rng = np.random.default_rng(seed)
    n = n_per_group * GROUPS
    group = np.repeat(np.arange(GROUPS), n_per_group)
    rng.shuffle(group)
    group[0] = 0  # the planted user is a browser
    halves = rng.normal(0.0, 1.0, size=(2, EMB_DIM)) * 1.5
    centres = halves[np.arange(GROUPS) // 2] + rng.normal(0.0, 1.0, size=(GROUPS, EMB_DIM)) * 0.8
    return {
        "user_id": [f"u{i:04d}" for i in range(n)],
        "group": group,
        "activity": rng.lognormal(0.0, 0.25, size=n),
        "emb": centres[group] + rng.normal(0.0, 0.5, size=(n, EMB_DIM)),
    }


def day_rows(users: dict, day: dt.date, seed: int, night_shift: float = 0.0):
    """(behaviour rows, embedding rows) for one day, as tuples in schema order."""
    rng = np.random.default_rng(seed)
    ts = dt.datetime.combine(day, dt.time(23, 59, 59))
    created = dt.datetime(2024, 4, 1, 0, 0, 0)
    behaviour, embeddings = [], []
    for i, uid in enumerate(users["user_id"]):
        g = int(users["group"][i])
        lam = _RATES[g] * users["activity"][i]
        views30, searches30, carts30, favs30, purchases30, sessions30 = (int(v) for v in rng.poisson(lam))
        drawn_searches30 = searches30
        if uid == PLANTED_USER:
            searches30 = PLANTED_VALUE * 6 // 5
        views7 = int(rng.binomial(views30, 0.25))
        views1 = int(rng.binomial(views7, 0.15))
        searches7 = int(rng.binomial(searches30, 0.25))
        if uid == PLANTED_USER:
            searches7 = PLANTED_VALUE
        clicks7 = int(rng.binomial(views7, 0.3))
        carts7 = int(rng.binomial(carts30, 0.25))
        favs7 = int(rng.binomial(favs30, 0.25))
        purchases7 = int(rng.binomial(purchases30, 0.25))
        price = float(rng.lognormal(3.0, 0.3)) if purchases30 else None
        spend = float(purchases30 * price) if purchases30 else 0.0
        sessions30 = max(1, sessions30)
        active_days = int(min(30, max(1, rng.binomial(30, min(0.95, sessions30 / 40)))))
        night = float(np.clip(_NIGHT[g] + rng.normal(0, 0.03) + night_shift, 0.0, 1.0))
        distinct_items = int(max(1, views30 * rng.uniform(0.4, 0.7)))
        distinct_cats = int(max(1, min(distinct_items, rng.poisson(5 + distinct_items / 40))))
        distinct_queries = int(searches30 * rng.uniform(0.5, 0.8)) if uid != PLANTED_USER else 25
        # The planted searches are logged outside sessions (a script): sessions keep
        # their size, so the one absurd value is searches_7d alone.
        n_events = views30 + drawn_searches30 + carts30 + favs30 + purchases30
        behaviour.append((
            uid, day, ts, created,
            views1, views7, views30, clicks7, searches7, carts7, carts30, favs7, favs30,
            purchases7, purchases30,
            distinct_items, distinct_cats, distinct_queries, spend, price,
            carts30 / views30 if views30 else None,
            purchases30 / views30 if views30 else None,
            purchases30 / carts30 if carts30 else None,
            int(rng.integers(0, 3)),
            int(rng.integers(0, 30)) if purchases30 else None,
            active_days, sessions30,
            n_events / sessions30,
            night,
            [f"c{g}", f"c{g + 10}"],
            float(rng.uniform(0.2, 0.6)),
            float(rng.uniform(0.1, 0.5)) if purchases30 else None,
        ))
        emb = users["emb"][i] + rng.normal(0.0, 0.05, size=EMB_DIM)
        embeddings.append((uid, day, ts, created, [float(v) for v in emb], ENCODER))
    return behaviour, embeddings


def write_inputs(spark, settings, n_per_group: int = 120, days=(DAY1, DAY2)) -> dict:
    """Write synthetic input tables for ``days`` under ``settings``' home; return the users."""
    from spark_jobs import delta_io

    users = make_users(n_per_group)
    b_rows, e_rows = [], []
    for j, day in enumerate(days):
        b, e = day_rows(users, day, seed=100 + j, night_shift=0.25 * j)
        b_rows += b
        e_rows += e
    b_df = spark.createDataFrame(b_rows, USER_BEHAVIOUR)
    e_df = spark.createDataFrame(e_rows, USER_EMBEDDINGS)
    start, end = min(days), max(days)
    delta_io.replace_where(b_df, settings.table("silver.user_behaviour"), USER_BEHAVIOUR, "as_of_date", start, end)
    delta_io.replace_where(e_df, settings.table("gold.user_embeddings"), USER_EMBEDDINGS, "as_of_date", start, end)
    return users


# One fused home per test run, shared by test_fuse_pipeline and test_report_render
# (this module is imported once, so the dict outlives both modules). Tests that change
# the home (refit) copy it first.
_BUILT: dict = {}
TEST_ENV = {
    "PERSONA__SPARK__MASTER": "local[2]",
    "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4",
    # Four planted groups: a range around it keeps the silhouette search honest and short.
    "PERSONA__FUSION__MAX_SEGMENTS": "5",
    # Spark's BisectingKMeans always runs every iteration (one job each); these clusters
    # converge in a few, and the suite has a time budget.
    "PERSONA__FUSION__MAX_ITER": "8",
}


def make_settings(home):
    return load_settings(home=home, environ=TEST_ENV)


def fused_home(spark, tmp_path_factory) -> dict:
    """Inputs for DAY1 and DAY2, fused with one fitted version (v1): built once per run."""
    if not _BUILT:
        settings = make_settings(tmp_path_factory.mktemp("fuse-home"))
        users = write_inputs(spark, settings)
        day1 = run_fuse(spark, settings, as_of=DAY1)
        day2 = run_fuse(spark, settings)  # default: the latest day, applying v1
        _BUILT.update(settings=settings, users=users, day1=day1, day2=day2)
    return _BUILT
