"""Embedded SQL engine over real Delta tables: every view gives Spark's rows, the engine
cannot write, parameters are bound, missing/empty tables are clear."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from tests.support.sql_data import assert_same_rows, sql_home

from persona.sql.catalogue import BASE_TABLES, catalogue, get_view, spark_sql_over_paths
from persona.sql.embedded import embedded_engine
from persona.sql.query import run_query, run_view
from core.settings import load_settings
from core.errors import InputError, NotBuiltError

pytestmark = pytest.mark.integration
VIEWS = sorted(catalogue())


@pytest.fixture(scope="module")
def home(spark, tmp_path_factory):
    return sql_home(spark, tmp_path_factory)


@pytest.fixture(scope="module")
def settings_(home):
    return load_settings(home=home, environ={})


@pytest.fixture(scope="module")
def engine(settings_):
    eng = embedded_engine(settings_)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def events(settings_):
    from deltalake import DeltaTable

    return DeltaTable(settings_.table("bronze.events")).to_pandas()


@pytest.mark.parametrize("name", VIEWS)
def test_view_gives_the_same_rows_on_spark_and_duckdb(spark, settings_, engine, name):
    view = get_view(name)
    paths = {t: settings_.table(t) for t in BASE_TABLES}
    spark_df = spark.sql(spark_sql_over_paths(view.sql, paths))
    expected = [tuple(r) for r in spark_df.collect()]
    got = run_view(engine, name)
    assert got.columns == spark_df.columns
    assert expected, f"{name}: the synthetic data should give rows"
    assert_same_rows(got.rows, expected, name)


def test_funnel_daily_matches_pandas(engine, events):
    per_user = events.assign(v=events.event_type.eq("view"), c=events.event_type.eq("cart"),
                             p=events.event_type.eq("purchase"))
    flags = per_user.groupby(["event_date", "user_id"])[["v", "c", "p"]].any()
    rows = {r["event_date"]: r for r in run_view(engine, "funnel_daily").records()}
    assert len(rows) == events.event_date.nunique()
    for day, f in flags.groupby(level=0):
        row = rows[day]
        assert row["active_users"] == len(f)
        assert row["views"] == int(per_user[per_user.event_date == day].v.sum())
        assert row["viewers"] == int(f.v.sum()) and row["carters"] == int(f.c.sum())
        assert row["view_to_cart_rate"] == pytest.approx((f.v & f.c).sum() / f.v.sum())


def test_user_profile_latest_has_one_row_per_user_at_their_latest_date(engine, settings_):
    from deltalake import DeltaTable

    profiles = DeltaTable(settings_.table("gold.user_profiles")).to_pandas()
    latest = profiles.groupby("user_id").as_of_date.max()
    rows = run_view(engine, "user_profile_latest").records()
    assert len(rows) == len({r["user_id"] for r in rows}) == len(latest)
    assert all(r["as_of_date"] == latest[r["user_id"]] for r in rows)
    assert all(len(r["profile_vec"]) == 8 for r in rows)


def test_cohort_retention_and_feature_drift_are_sane(engine):
    cohorts = run_view(engine, "cohort_retention").records()
    assert {r["retention"] for r in cohorts if r["weeks_since"] == 0} == {1.0}
    assert all(0 < r["retention"] <= 1 for r in cohorts)
    drift = run_view(engine, "feature_drift").records()
    first = min(r["as_of_date"] for r in drift)
    assert all(r["psi"] is None for r in drift if r["as_of_date"] == first)
    later = [r for r in drift if r["as_of_date"] != first]
    assert later and all(r["psi"] >= 0 and r["drift"] in ("stable", "moderate", "major") for r in later)
    # the synthetic views_30d grows 15% a day: measurable drift
    assert max(r["psi"] for r in later if r["feature"] == "views_30d") > 0


def _table_state(settings_):
    from deltalake import DeltaTable

    return {t: (DeltaTable(settings_.table(t)).version(), sorted(DeltaTable(settings_.table(t)).file_uris()))
            for t in ("bronze.events", "silver.user_behaviour", "gold.user_profiles")}


@pytest.mark.parametrize("sql", [
    "delete from silver.user_behaviour",
    "insert into gold.user_profiles select * from gold.user_profiles",
    "create table gold.copy as select * from gold.user_profiles",
    "drop view funnel_daily",
    "copy (select 1) to 'x.parquet'",
])
def test_analyst_cannot_modify_through_the_query_path(engine, sql):
    with pytest.raises(InputError, match="read-only access"):
        run_query(engine, sql)


def test_engine_itself_refuses_writes_when_the_check_is_bypassed(engine, settings_, tmp_path):
    before = _table_state(settings_)
    target = os.path.join(settings_.table("gold.user_profiles"), "as_of_date=2024-03-04", "evil.parquet")
    attempts = {
        "create table t as select 1": "read-only",
        "delete from silver.user_behaviour": "",
        f"copy (select 1 as a) to '{target}'": "Permission",
        f"copy (select 1 as a) to '{tmp_path / 'out.csv'}'": "Permission",
        "set enable_external_access = true": "locked",
        "select * from read_csv('/etc/passwd')": "Permission",
        "attach ':memory:' as m": "",
    }
    raw = engine.raw_connection()
    try:
        for sql, message in attempts.items():
            cur = raw.cursor()
            with pytest.raises(Exception, match=message or None) as info:
                cur.execute(sql)
            assert info.value is not None, sql
    finally:
        raw.close()
    assert not os.path.exists(target)
    assert _table_state(settings_) == before


def test_parameters_are_bound_not_pasted(engine):
    sql = "select user_id from user_profile_latest where user_id = :u"
    assert run_query(engine, sql, {"u": "u0000001"}).rows == [("u0000001",)]
    assert run_query(engine, sql, {"u": "u0000001' or '1'='1"}).rows == []
    got = run_view(engine, "user_profile_latest", {"user_id": "x' or '1'='1"})
    assert got.rows == []
    with pytest.raises(InputError, match="has no column"):
        run_view(engine, "user_profile_latest", {"user_id = user_id or 1": "1"})


def test_missing_and_empty_tables(spark, home, tmp_path):
    from spark_jobs.delta_io import create_if_missing
    from spark_jobs.schemas import USER_PROFILES

    empty_home = load_settings(home=tmp_path / "empty", environ={})
    with pytest.raises(NotBuiltError, match="bronze.events"):
        run_view(embedded_engine(empty_home), "funnel_daily")

    partial = load_settings(home=tmp_path / "partial", environ={})
    for t in ("bronze.events", "silver.user_behaviour"):
        shutil.copytree(load_settings(home=home, environ={}).table(t), partial.table(t))
    eng = embedded_engine(partial)
    assert run_view(eng, "funnel_daily").rows
    with pytest.raises(NotBuiltError, match="gold.user_profiles"):
        run_view(eng, "segment_summary")
    with pytest.raises(NotBuiltError, match="gold.user_profiles"):
        run_query(eng, "select count(*) from gold.user_profiles")

    # An existing but empty table: typed, zero rows.
    create_if_missing(spark, partial.table("gold.user_profiles"), USER_PROFILES, ["as_of_date"])
    eng = embedded_engine(partial)
    got = run_view(eng, "user_profile_latest")
    assert got.rows == [] and "profile_vec" in got.columns


def test_engine_follows_new_table_versions(spark, home, tmp_path):
    import datetime as dt

    from spark_jobs.schemas import USER_PROFILES

    s = load_settings(home=tmp_path / "copy", environ={})
    for t in ("bronze.events", "silver.user_behaviour", "gold.user_profiles"):
        shutil.copytree(load_settings(home=home, environ={}).table(t), s.table(t))
    first = embedded_engine(s)
    n = run_query(first, "select count(*) from user_profile_latest").rows[0][0]
    now = dt.datetime(2024, 3, 10)
    row = ("u9999999", dt.date(2024, 3, 9), now, now, [0.0] * 8, 1, "fusion-v1", "encoder-v1")
    spark.createDataFrame([row], USER_PROFILES).write.format("delta").mode("append").save(s.table("gold.user_profiles"))
    second = embedded_engine(s)
    assert second.persona_catalog.path != first.persona_catalog.path
    assert run_query(second, "select count(*) from user_profile_latest").rows[0][0] == n + 1


def _cli(monkeypatch, capsys, *args):
    """Run ``persona ARGS`` in this process (a subprocess would spend its time importing)."""
    from persona import cli

    monkeypatch.setattr(sys, "argv", ["persona", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_json_and_refuses_writes_in_one_line(home, engine, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "--home", str(home), "sql", "--view", "funnel_daily", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    expected = run_view(engine, "funnel_daily").records()
    assert sorted(r["event_date"] for r in rows) == sorted(r["event_date"].isoformat() for r in expected)
    code, out, err = _cli(monkeypatch, capsys, "--home", str(home), "sql", "delete from silver.user_behaviour")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["error: read-only access: DELETE statements are not allowed (only queries)"]
    code, out, err = _cli(monkeypatch, capsys, "--home", str(home), "sql", "select user_id from user_profile_latest "
                          "where user_id = :u", "--param", "u=u0000002", "--format", "csv")
    assert code == 0 and out.splitlines() == ["user_id", "u0000002"]
