"""The behaviour and sequence transforms on tiny hand-made frames, with expected values
worked out by hand: window edges, idle-gap sessions across midnight and across the
window start, exact distinct counts around the 30-day edge, weighted top categories and
their tie-break, null meanings, padding of sequences."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from spark_jobs.silver import behaviour, rollup
from spark_jobs.silver.partials import BehaviourParams
from spark_jobs.schemas import EVENTS, USER_BEHAVIOUR, USER_SEQUENCES
from spark_jobs.silver.sequences import user_sequences

D = dt.date(2024, 3, 31)  # the as-of day most checks use
ING = dt.datetime(2024, 4, 2)
PARAMS = BehaviourParams(
    session_gap_minutes=30,
    category_weights={"purchase": 8.0, "cart": 4.0, "fav": 2.0, "click": 1.0, "view": 1.0, "search": 0.0},
)


def at(day: dt.date, h: int, m: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, h, m)


def days_before(n: int) -> dt.date:
    return D - dt.timedelta(days=n)


_n = iter(range(10_000))


def ev(user, ts, etype="view", item="i1", cat="c1", price=None, qty=None, sid=None, query=None, brand=None,
       ingested=ING):
    return (f"e{next(_n):05d}", user, item, cat, etype, ts, ts.date(), price, qty, sid, query, brand, "t", ingested)


ROWS = [
    # u_win: window edges. D-30 is outside the 30-day window, D-29 inside; D-7 outside 7d.
    ev("u_win", at(days_before(30), 12), "view", item="old"),
    ev("u_win", at(days_before(29), 12), "view", item="edge"),
    ev("u_win", at(days_before(7), 12), "cart", item="edge"),
    ev("u_win", at(days_before(6), 12), "cart", item="x"),
    ev("u_win", at(D, 3), "view", item="x"),
    # u_gap: idle-gap sessions (no session id). 23:50 -> 00:10 crosses midnight: one
    # session; 00:10 -> 01:00 is 50 min: a new one. Total 2 sessions, 3 events.
    ev("u_gap", at(days_before(1), 23, 50), "view", cat=None),
    ev("u_gap", at(D, 0, 10), "view", cat=None),
    ev("u_gap", at(D, 1, 0), "search", query="red shoes", cat=None),
    # u_edge: a session straddling the window start (D-30 23:45 -> D-29 00:05) counts once.
    ev("u_edge", at(days_before(30), 23, 45)),
    ev("u_edge", at(days_before(29), 0, 5)),
    ev("u_edge", at(days_before(29), 0, 20)),
    # u_sid: source sessions, one spanning two days.
    ev("u_sid", at(days_before(2), 10), sid="s1"),
    ev("u_sid", at(days_before(1), 10), sid="s1"),
    ev("u_sid", at(D, 10), sid="s2", etype="purchase", price=10.0, qty=3),
    ev("u_sid", at(D, 11), sid="s2", etype="purchase", price=None),
    # u_top: weights and tie-break. c2: cart (4); c1: 4 views (4); c3: purchase (8);
    # c9: search only (0, excluded). Top: c3 (8), then c1/c2 tie at 4 -> c1 first.
    ev("u_top", at(D, 8), "cart", cat="c2", brand="b1"),
    *[ev("u_top", at(D, 9, i), "view", cat="c1", brand="b2") for i in range(4)],
    ev("u_top", at(D, 10), "purchase", cat="c3", price=5.0),
    ev("u_top", at(D, 11), "search", cat="c9", query="q"),
    ev("u_top", at(D, 12), "search", cat="c9", query="q"),
    # u_future: only events after D: no row for D.
    ev("u_future", at(D + dt.timedelta(days=1), 1)),
]


@pytest.fixture(scope="module")
def frame(spark):
    return spark.createDataFrame(ROWS, EVENTS)


@pytest.fixture(scope="module")
def rows(frame):
    out = rollup.behaviour_features(frame, days_before(30), D + dt.timedelta(days=1), PARAMS, partitions=2)
    assert out.schema == USER_BEHAVIOUR or [f.name for f in out.schema] == USER_BEHAVIOUR.fieldNames()
    return {(r["user_id"], r["as_of_date"]): r.asDict() for r in out.collect()}


def test_schema_is_the_contract(frame):
    out = rollup.behaviour_features(frame, D, D, PARAMS)
    assert [(f.name, f.dataType) for f in out.schema] == [(f.name, f.dataType) for f in USER_BEHAVIOUR]


def test_window_edges_and_counts(rows):
    r = rows[("u_win", D)]
    assert (r["views_1d"], r["views_7d"], r["views_30d"]) == (1, 1, 2)  # D-30 view is out
    assert (r["carts_7d"], r["carts_30d"]) == (1, 2)  # D-7 cart is outside 7d
    assert r["distinct_items_30d"] == 2  # edge, x ("old" left the window)
    assert r["active_days_30d"] == 4 and r["days_since_last_event"] == 0
    assert r["cart_rate_30d"] == pytest.approx(1.0) and r["purchase_rate_30d"] == 0.0
    assert r["cart_to_purchase_30d"] == 0.0
    assert r["days_since_last_purchase"] is None and r["avg_purchase_price_30d"] is None
    assert r["spend_30d"] == 0.0
    # D+1: the D-29 event leaves the window, 'edge' stays thanks to the D-7 cart
    r1 = rows[("u_win", D + dt.timedelta(days=1))]
    assert r1["views_30d"] == 1 and r1["distinct_items_30d"] == 2 and r1["days_since_last_event"] == 1
    assert r1["event_timestamp"] == dt.datetime(2024, 4, 1, 23, 59, 59, 999999)


def test_a_row_exists_only_with_an_event_in_the_window(rows):
    assert ("u_future", D) not in rows and ("u_future", D + dt.timedelta(days=1)) in rows
    # u_win has rows for every as-of day from D-30 on (an event in each window)
    assert all(("u_win", days_before(k)) in rows for k in range(31))


def test_idle_gap_sessions_cross_midnight(rows):
    r = rows[("u_gap", D)]
    assert r["sessions_30d"] == 2
    assert r["avg_session_events_30d"] == pytest.approx(1.5)
    assert r["night_share_30d"] == pytest.approx(2 / 3)  # 00:10 and 01:00 are night, 23:50 is not
    assert r["distinct_queries_30d"] == 1 and r["distinct_categories_30d"] == 0
    assert r["top_categories_30d"] == [] and r["top_category_share_30d"] is None
    assert r["cart_rate_30d"] == 0.0


def test_a_session_straddling_the_window_start_counts_once(rows):
    assert rows[("u_edge", D)]["sessions_30d"] == 1
    assert rows[("u_edge", days_before(30))]["sessions_30d"] == 1
    assert rows[("u_edge", days_before(29))]["sessions_30d"] == 1


def test_source_sessions_and_spend(rows):
    r = rows[("u_sid", D)]
    assert r["sessions_30d"] == 2
    assert r["purchases_30d"] == 2 and r["spend_30d"] == 30.0  # 10 x 3; the unpriced one adds nothing
    assert r["avg_purchase_price_30d"] == 10.0
    assert r["days_since_last_purchase"] == 0
    assert r["cart_to_purchase_30d"] is None  # no cart
    assert r["purchase_rate_30d"] == 1.0  # 2 purchases / 2 views
    assert r["created_timestamp"] == ING


def test_top_categories_weights_and_ties(rows):
    r = rows[("u_top", D)]
    assert r["top_categories_30d"] == ["c3", "c1", "c2"]
    assert r["top_category_share_30d"] == pytest.approx(8 / 16)
    assert r["top_brand_share_30d"] == pytest.approx(4 / 8)  # b1 cart 4, b2 views 4
    assert r["distinct_categories_30d"] == 4 and r["distinct_queries_30d"] == 1
    assert r["searches_7d"] == 2


def test_distinct_counts_at_the_thirty_day_edge(spark):
    # item seen on days 0 and 30: in every window from day 0 to day 59, counted once
    day0 = dt.date(2024, 1, 1)
    rows = [ev("u", at(day0, 1), item="i"), ev("u", at(day0 + dt.timedelta(days=30), 1), item="i"),
            ev("u", at(day0 + dt.timedelta(days=29), 1), item="j")]
    out = rollup.behaviour_features(spark.createDataFrame(rows, EVENTS), day0, day0 + dt.timedelta(days=60), PARAMS)
    got = {r["as_of_date"]: r["distinct_items_30d"] for r in out.collect()}
    assert got[day0] == 1 and got[day0 + dt.timedelta(days=29)] == 2 and got[day0 + dt.timedelta(days=30)] == 2
    assert got[day0 + dt.timedelta(days=58)] == 2  # j (day 29) is in windows up to day 58
    assert got[day0 + dt.timedelta(days=59)] == 1 and day0 + dt.timedelta(days=60) not in got


def test_sequences_order_padding_and_cut(spark, frame):
    out = user_sequences(frame, D, D, length=3)
    assert [f.name for f in out.schema] == USER_SEQUENCES.fieldNames()
    got = {r["user_id"]: r.asDict() for r in out.collect()}
    top = got["u_top"]  # 8 events on D: the last 3, oldest first
    assert top["seq_len"] == 3
    assert top["event_types"] == ["purchase", "search", "search"]
    assert top["category_ids"] == ["c3", "c9", "c9"]
    assert top["gap_seconds"] == [0.0, 3600.0, 3600.0]
    gap = got["u_gap"]  # 3 events, the first on D-1; missing categories are ""
    assert gap["seq_len"] == 3 and gap["category_ids"] == ["", "", ""]
    assert gap["gap_seconds"] == [0.0, 1200.0, 3000.0]
    edge = got["u_edge"]  # only 2 events in the window (the D-30 one is out): padded
    assert edge["seq_len"] == 2 and edge["item_ids"] == ["i1", "i1", ""] and edge["event_types"][2] == ""
    assert edge["gap_seconds"] == [0.0, 900.0, 0.0]
    assert "u_future" not in got
    assert top["event_timestamp"] == dt.datetime(2024, 3, 31, 23, 59, 59, 999999)


def test_passes_split_contiguous_runs():
    d = [dt.date(2024, 1, k) for k in (1, 2, 3, 5, 6, 7, 8, 9)]
    assert behaviour._runs(d, 3) == [
        (d[0], d[2]), (d[3], d[5]), (d[6], d[7]),
    ]
    assert behaviour._runs([], 30) == []


def test_feature_dictionary_matches_the_schemas_and_the_docs():
    from spark_jobs.silver import feature_dictionary as fd

    assert fd.check() == []
    md = fd.markdown()
    for name in USER_BEHAVIOUR.fieldNames():
        assert f"| `{name}` |" in md
    assert "23:59:59.999999" in md
    docs = Path(__file__).resolve().parents[2] / "docs" / "features.md"
    assert docs.read_text() == md, "docs/features.md is stale: run python -m spark_jobs.silver.feature_dictionary"
