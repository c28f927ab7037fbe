"""The data-quality gate's decisions (pure: daily counts in, flags out)."""

from __future__ import annotations

import datetime as dt

import pytest

from core.settings import load_settings
from spark_jobs.silver.quality import assess

D = dt.date(2024, 3, 10)


def _day(events, item_missing=0, price_expected=10, price_missing=0):
    non_search = events - 10
    return {"events": events, "item_id__expected": non_search, "item_id__missing": item_missing,
            "category_id__expected": non_search, "category_id__missing": 0,
            "price__expected": price_expected, "price__missing": price_missing,
            "query__expected": 10, "query__missing": 0}


@pytest.fixture
def settings(tmp_path):
    return load_settings(home=tmp_path)


def _week(events=1000, **kw):
    return {D - dt.timedelta(days=i): _day(events, **kw) for i in range(1, 8)}


def test_a_normal_day_is_checked_and_not_flagged(settings):
    counts = {**_week(), D: _day(1100)}
    (day,) = assess(counts, [D], settings).days
    assert day.checked and day.flags == []
    assert day.volume_ratio == pytest.approx(1.1)


def test_volume_spike_and_collapse_are_flagged(settings):
    spike = assess({**_week(), D: _day(3500)}, [D], settings).days[0]
    assert len(spike.flags) == 1 and "3.50x" in spike.flags[0] and "max 3.0" in spike.flags[0]
    collapse = assess({**_week(), D: _day(200)}, [D], settings).days[0]
    assert len(collapse.flags) == 1 and "0.20x" in collapse.flags[0]


def test_missing_days_in_the_trailing_week_count_as_zero(settings):
    # Only one day of the week had events: the baseline is 1000/7, so 1000 is a 7x spike.
    counts = {D - dt.timedelta(days=3): _day(1000), D: _day(1000)}
    day = assess(counts, [D], settings, first_day=D - dt.timedelta(days=30)).days[0]
    assert day.baseline_events == pytest.approx(1000 / 7, rel=1e-3) and day.flags


def test_days_before_the_first_event_day_are_not_history(settings):
    first = D - dt.timedelta(days=3)
    counts = {first + dt.timedelta(days=i): _day(1000) for i in range(3)} | {D: _day(1100)}
    day = assess(counts, [D], settings).days[0]
    assert day.checked and day.baseline_events == pytest.approx(1000) and day.flags == []
    early = assess(counts, [first + dt.timedelta(days=2)], settings).days[0]
    assert not early.checked  # two days of history are too few for a baseline


def test_no_history_means_not_checked_never_flagged(settings):
    report = assess({D: _day(1000)}, [D], settings)
    assert not report.days[0].checked and report.flagged == []
    assert report.summary()["quality_days_checked"] == 0


def test_null_rate_rise_is_flagged_per_field(settings):
    counts = {**_week(item_missing=9), D: _day(1000, item_missing=300)}  # 0.9% -> 30.3% of 990
    day = assess(counts, [D], settings).days[0]
    assert len(day.flags) == 1 and day.flags[0].startswith("item_id missing on 30.3% of rows (trailing week 0.9%")
    # a rise within the allowed increase passes
    ok = assess({**_week(item_missing=9), D: _day(1000, item_missing=150)}, [D], settings).days[0]
    assert ok.flags == []


def test_bounds_come_from_config(tmp_path):
    strict = load_settings(home=tmp_path, environ={"PERSONA__BEHAVIOUR__MAX_VOLUME_RATIO": "1.05"})
    assert assess({**_week(), D: _day(1100)}, [D], strict).flagged


def test_summary_lists_flagged_days(settings):
    counts = {**_week(), D: _day(5000), D + dt.timedelta(days=1): _day(1000)}
    s = assess(counts, [D, D + dt.timedelta(days=1)], settings).summary()
    assert s["quality_days_checked"] == 2 and s["quality_days_flagged"] == 1
    assert s["quality_flags"][0].startswith("2024-03-10: volume 5,000")
