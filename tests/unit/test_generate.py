"""The synthetic generator: contract (columns, types, nulls), determinism, realism
(mix, rhythm, sessions, prices, popularity) and the planted structure later stages are
tested against (groups, drifting preferences, category successor chains)."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from persona.demo.generator import EVENT_COLUMNS, EVENT_TYPES, GROUP_NAMES, generate
from persona.demo.simulate import TARGET_MIX

START = date(2024, 3, 1)


@pytest.fixture(scope="module")
def log():
    return generate(1200, 21, seed=7, start=START)


@pytest.fixture(scope="module")
def ev(log):
    return log.events


@pytest.fixture(scope="module")
def per_user(log, ev):
    """Per-user behaviour aggregates, the kind silver.user_behaviour computes."""
    t = ev["event_type"]
    df = pd.DataFrame({
        "user_id": ev["user_id"],
        "n": 1,
        "cart": (t == "cart").astype(float),
        "purchase": (t == "purchase").astype(float),
        "search": (t == "search").astype(float),
        "night": (ev["event_ts"].dt.hour < 6).astype(float),
    })
    agg = df.groupby("user_id").agg(n=("n", "sum"), cart=("cart", "mean"), purchase=("purchase", "mean"),
                                    search=("search", "mean"), night=("night", "mean"))
    agg["n_categories"] = ev.groupby("user_id")["category_id"].nunique()
    agg["n_sessions"] = ev.groupby("user_id")["session_id"].nunique()
    agg["events_per_session"] = agg["n"] / agg["n_sessions"]
    agg["spend"] = ev[t == "purchase"].groupby("user_id")["price"].sum()
    agg["spend"] = agg["spend"].fillna(0.0)
    return agg.join(log.users.set_index("user_id")[["group", "group_name"]], how="inner")


# --- contract ---------------------------------------------------------------------------

def test_columns_and_types(ev):
    assert tuple(ev.columns) == EVENT_COLUMNS
    assert str(ev["event_ts"].dtype) == "datetime64[us, UTC]"
    assert ev["price"].dtype == np.float64
    assert str(ev["quantity"].dtype) == "Int32"
    for col in ("event_id", "user_id", "item_id", "category_id", "event_type", "session_id"):
        assert ev[col].map(type).eq(str).all(), col
    assert set(ev["event_type"]) == set(EVENT_TYPES)


def test_nulls_follow_event_type(ev):
    search = ev["event_type"] == "search"
    cart_or_buy = ev["event_type"].isin(["cart", "purchase"])
    assert ev["item_id"].notna().all() and ev["category_id"].notna().all()
    assert ev["price"].isna().eq(search).all()
    assert (ev.loc[~search, "price"] > 0).all()
    assert ev["query"].notna().eq(search).all()
    assert ev.loc[search, "query"].str.len().gt(0).all()
    assert ev["quantity"].notna().eq(cart_or_buy).all()
    assert (ev.loc[cart_or_buy, "quantity"] == 1).all()
    assert 0.02 < ev["brand"].isna().mean() < 0.3  # sometimes null, usually not


def test_ids_unique_and_sessions_belong_to_one_user(ev):
    assert ev["event_id"].is_unique
    assert ev.groupby("session_id")["user_id"].nunique().max() == 1


def test_timestamps_inside_window_and_sorted(ev):
    lo = pd.Timestamp(datetime(2024, 3, 1, tzinfo=timezone.utc))
    hi = lo + pd.Timedelta(days=21)
    assert ev["event_ts"].min() >= lo and ev["event_ts"].max() < hi
    # Microsecond precision is used (not truncated to seconds).
    assert (ev["event_ts"].dt.microsecond != 0).mean() > 0.9
    # Sorted by user then time: what sequence builders expect of a log.
    key = ev["user_id"] + "|" + ev["event_ts"].astype("int64").astype(str).str.zfill(20)
    assert key.is_monotonic_increasing


def test_deterministic_for_a_seed():
    a = generate(150, 5, seed=11)
    b = generate(150, 5, seed=11)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.categories, b.categories)


def test_different_seeds_differ():
    a = generate(150, 5, seed=11).events
    b = generate(150, 5, seed=12).events
    assert len(a) != len(b) or not a["category_id"].equals(b["category_id"])
    # Ids carry the run parameters, so two different logs never collide on ingest.
    assert not set(a["event_id"]) & set(b["event_id"])


def test_one_user_one_day():
    g = generate(1, 1, seed=0, start=date(2024, 2, 29))
    assert len(g.events) >= 1 and len(g.users) == 1
    day = g.events["event_ts"].dt.date
    assert (day == date(2024, 2, 29)).all()
    assert g.users["n_events"].iloc[0] == len(g.events)


def test_small_catalogue_and_single_group():
    g = generate(40, 3, seed=1, n_categories=2, n_groups=1)
    assert set(g.events["category_id"]) <= {"c000", "c001"}
    assert set(g.users["group_name"]) == {"browsers"}
    # The mix calibration holds whatever groups exist.
    assert abs((g.events["event_type"] == "view").mean() - TARGET_MIX["view"]) < 0.05


@pytest.mark.parametrize("kwargs", [
    dict(users=0, days=3), dict(users=5, days=0), dict(users=-1, days=3),
    dict(users=5, days=3, n_groups=5), dict(users=5, days=3, n_groups=0),
    dict(users=5, days=3, n_categories=1), dict(users=5, days=3, start="2024-01-01"),
    dict(users=5, days=3, seed=-1),
])
def test_bad_arguments_are_input_errors(kwargs):
    with pytest.raises(InputError):
        generate(**kwargs)


# --- realism ------------------------------------------------------------------------------

def test_event_mix_near_taobao(ev):
    share = ev["event_type"].value_counts(normalize=True)
    for t, target in TARGET_MIX.items():
        assert abs(share[t] - target) < max(0.006, 0.15 * target), (t, share[t], target)
    four = share[["view", "cart", "fav", "purchase"]]
    four = four / four.sum()
    assert abs(four["view"] - 0.89) < 0.015
    assert abs(four["cart"] - 0.055) < 0.008
    assert abs(four["fav"] - 0.03) < 0.006
    assert abs(four["purchase"] - 0.023) < 0.006


def test_sessions_have_idle_gaps(ev):
    dt = ev["event_ts"].diff().dt.total_seconds().to_numpy()[1:]
    same_user = (ev["user_id"].to_numpy()[1:] == ev["user_id"].to_numpy()[:-1])
    same_sess = (ev["session_id"].to_numpy()[1:] == ev["session_id"].to_numpy()[:-1])
    assert (dt[same_sess] >= 0).all() and (dt[same_sess] < 30 * 60).all()
    assert (dt[same_user & ~same_sess] > 30 * 60).all()
    assert np.median(dt[same_sess]) < 120  # seconds to minutes inside a session


def test_daily_rhythm_and_inactive_days(log, ev):
    day_users = log.users.loc[log.users["group_name"] != "night_owls", "user_id"]
    hours = ev.loc[ev["user_id"].isin(day_users), "event_ts"].dt.hour.value_counts()
    assert hours.loc[[19, 20, 21]].sum() > 5 * hours.loc[[3, 4, 5]].sum()
    # Some users skip several days in a row.
    days = ev.assign(d=ev["event_ts"].dt.normalize()).drop_duplicates(["user_id", "d"])
    gap = days.groupby("user_id")["d"].diff().dt.days
    assert (gap >= 4).groupby(days["user_id"]).any().mean() > 0.1
    # Activity is heavy-tailed: the top 10 % of users produce well over 10 % of events.
    n = ev["user_id"].value_counts()
    assert n.head(len(n) // 10).sum() / n.sum() > 0.25


def test_prices_and_item_popularity(ev, log):
    priced = ev[ev["price"].notna()]
    logp = np.log(priced["price"])
    by_cat = logp.groupby(priced["category_id"])
    # Category price levels: between-category spread dwarfs the within-category spread.
    assert by_cat.mean().std() > 2 * by_cat.std().mean()
    # Each item has one price.
    assert priced.groupby("item_id")["price"].nunique().max() == 1
    # Zipf inside a category: the top item gets far more than a uniform share.
    biggest = ev["category_id"].value_counts().index[0]
    items = ev.loc[ev["category_id"] == biggest, "item_id"].value_counts()
    n_items = int(log.categories.set_index("category_id").loc[biggest, "n_items"])
    assert items.iloc[0] / items.sum() > 20 / n_items
    assert items.head(10).sum() / items.sum() > 0.25


# --- planted structure ----------------------------------------------------------------------

def test_groups_are_balanced_and_named(log):
    counts = log.users["group_name"].value_counts()
    assert set(counts.index) == set(GROUP_NAMES)
    assert counts.max() - counts.min() <= 1
    assert (log.users["group_name"] == np.array(GROUP_NAMES, dtype=object)[log.users["group"]]).all()
    assert log.users["preferred_categories"].map(len).ge(4).all()


def test_group_separation_in_simple_aggregates(per_user):
    med = per_user.groupby("group_name").median(numeric_only=True)
    others = lambda g: med.drop(index=g)  # noqa: E731
    assert med.loc["browsers", "events_per_session"] > 1.3 * others("browsers")["events_per_session"].max()
    assert med.loc["browsers", "purchase"] < 0.5 * others("browsers")["purchase"].min()
    assert med.loc["buyers", "cart"] > 2 * others("buyers")["cart"].max()
    assert med.loc["buyers", "purchase"] > 2 * others("buyers")["purchase"].max()
    assert med.loc["buyers", "spend"] > 2 * others("buyers")["spend"].max()
    assert med.loc["night_owls", "night"] > 0.6 > 3 * others("night_owls")["night"].max()
    assert med.loc["explorers", "search"] > 2 * others("explorers")["search"].max()
    assert med.loc["explorers", "n_categories"] > 1.5 * others("explorers")["n_categories"].max()


def test_groups_recoverable_by_clustering(per_user):
    """KMeans on standardised rates finds the planted groups (adjusted Rand index)."""
    sklearn = pytest.importorskip("sklearn")  # dev dependency
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    active = per_user[per_user["n"] >= 20]
    X = np.column_stack([
        active["cart"], active["purchase"], active["search"], active["night"],
        active["n_categories"] / np.log1p(active["n"]), np.log(active["events_per_session"]),
    ])
    X = (X - X.mean(0)) / X.std(0)
    labels = KMeans(n_clusters=4, n_init=4, random_state=0).fit_predict(X)
    assert adjusted_rand_score(active["group"], labels) > 0.7
    assert sklearn is not None


def test_preferences_drift(log, ev):
    """Early events fall in the start set, late events in the end set."""
    u = log.users.set_index("user_id")
    t0 = ev["event_ts"].min()
    frac = (ev["event_ts"] - t0) / pd.Timedelta(days=21)
    early, late = ev[frac < 0.25], ev[frac > 0.75]

    def share_in(frame, column):
        sets = u.loc[frame["user_id"], column].to_numpy()
        return np.mean([c in s for c, s in zip(frame["category_id"].to_numpy(), sets)])

    assert share_in(early, "preferred_categories_start") > share_in(early, "preferred_categories") + 0.1
    assert share_in(late, "preferred_categories") > share_in(late, "preferred_categories_start") + 0.1


def test_successor_map_shows_in_transitions(log, ev):
    succ = log.categories.set_index("category_id")["successor_id"]
    assert (succ.index != succ.to_numpy()).all() and succ.is_unique
    prev, nxt = ev["category_id"].to_numpy()[:-1], ev["category_id"].to_numpy()[1:]
    same_user = ev["user_id"].to_numpy()[1:] == ev["user_id"].to_numpy()[:-1]
    changed = same_user & (prev != nxt)
    to_succ = succ.loc[prev[changed]].to_numpy() == nxt[changed]
    assert to_succ.mean() > 0.12  # vs ~1/120 if category changes were random


def _hit_rates(ev, n_categories, per_user_targets=5):
    """hr@10 of the next event's category on held-out users for three predictors."""
    cat = ev["category_id"].str[1:].astype(int).to_numpy()
    uid = ev["user_id"].str[1:].astype(int).to_numpy()
    train = uid % 2 == 0
    C = n_categories
    same = (uid[1:] == uid[:-1]) & train[1:]
    T = np.zeros((C, C))
    np.add.at(T, (cat[:-1][same], cat[1:][same]), 1.0)
    T = (T + 0.01) / (T + 0.01).sum(axis=1, keepdims=True)
    top_global = np.argsort(-np.bincount(cat[train], minlength=C), kind="stable")[:10]
    starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
    ends = np.r_[starts[1:], len(uid)]
    hits = {"global": [], "user_top": [], "markov": []}
    decay = 0.8 ** np.arange(30)[::-1]
    for s, e in zip(starts, ends):
        if train[s] or e - s < 20:
            continue
        seq = cat[s:e]
        for i in range(len(seq) - per_user_targets, len(seq)):
            hist, y = seq[:i], seq[i]
            hits["global"].append(y in top_global)
            counts = np.bincount(hist, minlength=C)
            hits["user_top"].append(y in np.argsort(-counts, kind="stable")[:10])
            recent = np.zeros(C)
            w = decay[-min(30, len(hist)):]
            np.add.at(recent, hist[-30:], w)
            score = T[hist[-1]] + 0.5 * recent / recent.sum()
            hits["markov"].append(y in np.argsort(-score, kind="stable")[:10])
    return {k: float(np.mean(v)) for k, v in hits.items()}, len(hits["markov"])


def test_markov_beats_popularity_and_user_favourites(log, ev):
    """The planted sequence structure is learnable: a first-order Markov model with user
    recency beats global top-10 and the user's own top-10 categories on held-out users."""
    hr, n = _hit_rates(ev, len(log.categories))
    assert n > 1500
    assert hr["markov"] > hr["user_top"] + 0.1, hr
    assert hr["markov"] > hr["global"] + 0.3, hr
    assert hr["user_top"] > hr["global"], hr  # personalisation itself is worth something


# --- write ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    return generate(60, 4, seed=3, start=START)


def _read_back(path, fmt):
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "csv":
        return pd.read_csv(path, dtype={"quantity": "Int32"}, keep_default_na=True)
    return pd.read_json(path, lines=True, dtype=False)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_write_round_trip(small, tmp_path, fmt):
    paths = small.write(tmp_path / "out", fmt)
    assert [p.name for p in paths] == [f"part-00000.{fmt}"]
    back = _read_back(paths[0], fmt)
    ev = small.events
    assert list(back.columns) == list(EVENT_COLUMNS)
    assert len(back) == len(ev)
    ts = pd.to_datetime(back["event_ts"], utc=True, format="ISO8601") if fmt != "parquet" else back["event_ts"]
    assert (ts.dt.tz_convert("UTC").to_numpy() == ev["event_ts"].to_numpy()).all()
    for col in ("event_id", "user_id", "item_id", "category_id", "event_type", "session_id"):
        assert (back[col].astype(str).to_numpy() == ev[col].to_numpy()).all(), col
    assert np.allclose(back["price"].astype(float), ev["price"], equal_nan=True)
    assert (back["quantity"].isna().to_numpy() == ev["quantity"].isna().to_numpy()).all()
    assert (back["query"].isna().to_numpy() == ev["query"].isna().to_numpy()).all()
    assert (back["query"].dropna().to_numpy() == ev["query"].dropna().to_numpy()).all()
    truth = pd.read_parquet(tmp_path / "out" / "truth" / "users.parquet")
    assert list(truth["user_id"]) == list(small.users["user_id"])
    assert list(truth["preferred_categories"].iloc[0]) == small.users["preferred_categories"].iloc[0]


def test_text_formats_use_iso_utc(small, tmp_path):
    small.write(tmp_path / "c", "csv")
    header, first = (tmp_path / "c" / "events" / "part-00000.csv").read_text().splitlines()[:2]
    assert header.replace('"', "").split(",") == list(EVENT_COLUMNS)
    assert "2024-03-0" in first and "Z" in first
    small.write(tmp_path / "j", "json")
    row = json.loads((tmp_path / "j" / "events" / "part-00000.json").read_text().splitlines()[0])
    assert row["event_ts"].endswith("Z") and "T" in row["event_ts"]


def test_parquet_timestamps_are_microseconds(small, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    small.write(tmp_path / "p", "parquet")
    schema = pq.read_schema(tmp_path / "p" / "events" / "part-00000.parquet")
    assert schema.field("event_ts").type == pa.timestamp("us", tz="UTC")


def test_write_parts_and_idempotent_overwrite(small, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "README").write_text("keep me")
    paths = small.write(out, "parquet", rows_per_part=1000)
    assert len(paths) == -(-len(small.events) // 1000) and len(paths) > 1
    first = {p.name: p.read_bytes() for p in paths}
    paths2 = small.write(out, "parquet", rows_per_part=1000)
    assert {p.name: p.read_bytes() for p in paths2} == first
    # Fewer parts on rewrite: no stale part files are left behind.
    small.write(out, "parquet")
    assert sorted(p.name for p in (out / "events").iterdir()) == ["part-00000.parquet"]
    assert (out / "README").read_text() == "keep me"
    back = pd.concat(pd.read_parquet(p) for p in sorted((out / "events").iterdir()))
    assert len(back) == len(small.events)


def test_write_rejects_unknown_format(small, tmp_path):
    with pytest.raises(InputError):
        small.write(tmp_path, "xml")


def test_summary(small):
    s = small.summary()
    assert s["events"] == len(small.events) and s["users"] == 60 and s["days"] == 4
    assert abs(sum(s["mix"].values()) - 1.0) < 1e-9
