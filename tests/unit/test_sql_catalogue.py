"""The view catalogue, its translation and the read-only checks (no Spark, no tables)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from persona.sql.catalogue import (
    BASE_TABLES,
    SQL_DIR,
    catalogue,
    get_view,
    spark_sql_over_paths,
    translate,
    translate_from,
)
from persona.sql.guard import check_read_only
from persona.sql.query import _coerce, first_error_line
from persona.sql.thrift import GUARD_CLASS, GUARD_SOURCE, server_setup_statements
from core.errors import InputError

REQUIRED = {
    "user_profile_latest",
    "user_behaviour_daily",
    "segment_summary",
    "category_affinity",
    "funnel_daily",
    "cohort_retention",
    "feature_drift",
}


@pytest.fixture(scope="module")
def views():
    return catalogue()


def _code(text: str) -> str:
    """The SQL without comments and string literals."""
    text = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return re.sub(r"'[^']*'", "''", text)


def test_catalogue_has_the_issue_views(views):
    assert REQUIRED <= set(views)


def test_base_tables_match_the_schema_contract():
    from spark_jobs.schemas import TABLES

    assert set(BASE_TABLES) == set(TABLES)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_view_file_conventions(views, name):
    view = views[name]
    text = (SQL_DIR / f"{name}.sql").read_text()
    # a grain comment first, lowercase code, CTE-first, no trailing statement separator
    assert text.startswith("-- grain: one row per"), name
    assert view.grain.startswith("one row per")
    code = _code(text)
    assert code == code.lower(), f"{name}: SQL must be lowercase"
    assert code.strip().startswith("with "), f"{name}: CTE-first"
    assert not text.rstrip().endswith(";")
    tree = sqlglot.parse_one(view.sql, read="spark")
    assert isinstance(tree, exp.Select) and tree.find(exp.With) is not None
    assert tree.args.get("order") is None, f"{name}: a view does not order its rows"
    assert set(view.tables) <= set(BASE_TABLES)
    assert view.tables, name


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_views_translate_to_duckdb_sql_duckdb_parses(views, name):
    duck = views[name].translated("duckdb")
    statements = duckdb.extract_statements(duck)
    assert [s.type.name for s in statements] == ["SELECT"]
    # Spark's 0-based element access must have become DuckDB's 1-based one, etc.
    assert "try_element_at" not in duck.lower()


def test_translation_of_dialect_differences():
    out = translate("select try_element_at(xs, 1) as a, datediff(d2, d1) div 7 as w from t", "duckdb")
    assert "xs[1]" in out and "DATE_DIFF('DAY'" in out and "// 7" in out


def test_translate_from_rejects_garbage():
    with pytest.raises(ValueError, match="cannot translate"):
        translate_from("select (", "spark", "duckdb")


def test_get_view_accepts_only_catalogue_names():
    assert get_view("funnel_daily").name == "funnel_daily"
    for bad in ("nope", "funnel_daily; drop table x", "FUNNEL_DAILY", "../funnel_daily", ""):
        with pytest.raises(InputError, match="unknown view"):
            get_view(bad)


@pytest.mark.parametrize("sql", [
    "select 1",
    "with a as (select 1 as x) select * from a",
    "from funnel_daily",
    "describe funnel_daily",
    "show tables",
    "explain select 1",
    "select * from funnel_daily where event_date = $1",
])
def test_duckdb_reads_pass(sql):
    check_read_only(sql, "duckdb")


@pytest.mark.parametrize("sql,kind", [
    ("delete from silver.user_behaviour", "DELETE"),
    ("insert into silver.user_behaviour select * from silver.user_behaviour", "INSERT"),
    ("create table x as select 1", "CREATE"),
    ("create temp view x as select 1", "CREATE"),
    ("update gold.user_profiles set segment_id = 0", "UPDATE"),
    ("drop view funnel_daily", "DROP"),
    ("copy (select 1) to '/tmp/x.parquet'", "COPY"),
    ("attach 'other.duckdb'", "ATTACH"),
    ("set enable_external_access = true", "SET"),
    ("pragma version", "PRAGMA"),
    ("install httpfs", "LOAD"),
    ("explain analyze copy (select 1) to '/tmp/x.csv'", "COPY"),
    ("export database '/tmp/x'", "EXPORT"),
])
def test_duckdb_writes_are_refused(sql, kind):
    with pytest.raises(InputError, match=f"read-only access: {kind}"):
        check_read_only(sql, "duckdb")


def test_multiple_statements_are_refused():
    with pytest.raises(InputError, match="one statement"):
        check_read_only("select 1; delete from t", "duckdb")
    with pytest.raises(InputError, match="one statement"):
        check_read_only("select 1; select 2", "spark")


@pytest.mark.parametrize("sql", ["select 1", "show tables", "describe funnel_daily", "explain select 1",
                                 "with a as (select 1) select * from a"])
def test_other_dialect_reads_pass(sql):
    check_read_only(sql, "spark")


@pytest.mark.parametrize("sql,dialect", [
    ("delete from silver.user_behaviour where 1 = 1", "spark"),
    ("insert into gold.user_profiles select * from gold.user_profiles", "spark"),
    ("create table x using delta as select 1", "spark"),
    ("drop view funnel_daily", "spark"),
    ("cache table funnel_daily", "spark"),
    ("set spark.sql.shuffle.partitions = 1", "spark"),
    ("optimize silver.user_behaviour", "spark"),
    ("vacuum silver.user_behaviour", "spark"),
    ("merge into t using s on t.a = s.a when matched then delete", "spark"),
    ("select * into newtable from funnel_daily", "postgres"),
    ("explain analyze insert into t select 1", "trino"),
    ("select (", "spark"),
])
def test_other_dialect_writes_are_refused(sql, dialect):
    with pytest.raises(InputError):
        check_read_only(sql, dialect)


def test_spark_sql_over_paths_rewrites_only_base_tables(views):
    paths = {t: f"/wh/{t.replace('.', '/')}" for t in BASE_TABLES}
    paths["silver.user_behaviour"] = "/wh/odd`name"
    out = spark_sql_over_paths(views["segment_summary"].sql, paths)
    assert "delta.`/wh/gold/user_profiles`" in out
    assert "delta.`/wh/odd``name`" in out  # backtick escaped, not closing the identifier
    assert "silver.user_behaviour" not in out
    assert "from members" in out.lower()  # CTE references untouched


def test_server_setup_registers_present_tables_and_skips_views_needing_missing_ones(tmp_path):
    from core.settings import load_settings

    s = load_settings(home=tmp_path, environ={})
    for t in ("bronze.events", "silver.user_behaviour"):
        Path(s.table(t), "_delta_log").mkdir(parents=True)
    statements, skipped = server_setup_statements(s)
    assert "CREATE DATABASE IF NOT EXISTS bronze" in statements
    assert f"CREATE OR REPLACE VIEW silver.user_behaviour AS SELECT * FROM delta.`{s.table('silver.user_behaviour')}`" in statements
    created = {m.group(1) for st in statements for m in [re.match(r"CREATE OR REPLACE VIEW default\.(\w+)", st)] if m}
    assert created == {"user_behaviour_daily", "funnel_daily", "cohort_retention", "category_affinity", "feature_drift"}
    assert skipped == {"user_profile_latest": ["gold.user_profiles"], "segment_summary": ["gold.user_profiles"]}
    assert not any("gold." in st for st in statements)


def test_first_error_line_extracts_spark_and_guard_messages():
    thrift = ("(pyhive.exc.OperationalError) TExecuteStatementResp(status=TStatus(statusCode=3, infoMessages="
              "['*org.apache.hive.service.cli.HiveSQLException:Error running query: java.lang.SecurityException: "
              "persona sql-server is read-only: DeleteCommand (a statement that writes or changes the catalog) "
              "is not allowed:42:41', 'org.apache...'])")
    assert first_error_line(thrift) == (
        "persona sql-server is read-only: DeleteCommand (a statement that writes or changes the catalog) is not allowed")
    spark = ("TStatus(statusCode=3, infoMessages=[\"*org.apache.hive.service.cli.HiveSQLException:Error running "
             "query: [TABLE_OR_VIEW_NOT_FOUND] org.apache.spark.sql.AnalysisException: [TABLE_OR_VIEW_NOT_FOUND] "
             "The table or view `nope` cannot be found.:41:40\", 'x'])")
    assert first_error_line(spark).startswith("[TABLE_OR_VIEW_NOT_FOUND]")


def test_filter_values_are_typed():
    import datetime as dt

    assert _coerce("3") == 3
    assert _coerce("0.5") == 0.5
    assert _coerce("2024-03-05") == dt.date(2024, 3, 5)
    assert _coerce("u1' or '1'='1") == "u1' or '1'='1"


def test_guard_source_refuses_commands_and_reflection():
    java = GUARD_SOURCE.read_text()
    assert "injectCheckRule" in java and "instanceof Command" in java and "Reflect" in java
    assert GUARD_CLASS == "persona.sql." + GUARD_SOURCE.stem
