"""feature_repo/ declares, literally, what spark_jobs/schemas.py says the tables hold.

The declarations may not import the project (Feast imports every .py in the repo), so
this test is what keeps the two lists from drifting apart.
"""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import pytest

pytest.importorskip("feast")

from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, LongType, StringType  # noqa: E402

from spark_jobs.schemas import USER_BEHAVIOUR, USER_EMBEDDINGS, USER_PROFILES  # noqa: E402

REPO = Path(__file__).resolve().parents[2] / "feature_repo"
KEYS = {"user_id", "as_of_date", "event_timestamp", "created_timestamp"}
# Present in the table, deliberately not served: the embedding view already serves the
# encoder version, and Feast refuses two features of one name in a service.
NOT_SERVED = {"user_profile": {"encoder_version"}}


def _spark_to_feast(dt) -> str:
    if isinstance(dt, ArrayType):
        return f"Array({_spark_to_feast(dt.elementType)})"
    return {LongType: "Int64", IntegerType: "Int32", DoubleType: "Float64",
            FloatType: "Float32", StringType: "String"}[type(dt)]


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("repo-home")
    old = os.environ.get("PERSONA_HOME")
    os.environ["PERSONA_HOME"] = str(home)
    try:
        return runpy.run_path(str(REPO / "persona_repo.py")), home
    finally:
        if old is None:
            os.environ.pop("PERSONA_HOME")
        else:
            os.environ["PERSONA_HOME"] = old


@pytest.mark.parametrize("view,schema", [
    ("user_behaviour", USER_BEHAVIOUR), ("user_embedding", USER_EMBEDDINGS), ("user_profile", USER_PROFILES),
])
def test_view_fields_match_table_schema(declared, view, schema):
    ns, _ = declared
    fv = ns[view]
    served = {f.name: str(f.dtype) for f in fv.features}
    table = {f.name: _spark_to_feast(f.dataType) for f in schema.fields if f.name not in KEYS}
    expected = {k: v for k, v in table.items() if k not in NOT_SERVED.get(view, set())}
    assert served.keys() == expected.keys()
    for name, dtype in expected.items():
        assert served[name].lower() == dtype.lower(), name


def test_sources_point_at_the_home_tables(declared):
    ns, home = declared
    paths = {ns[v].batch_source.path for v in ("user_behaviour", "user_embedding", "user_profile")}
    assert paths == {f"{home.resolve()}/warehouse/silver/user_behaviour",
                     f"{home.resolve()}/warehouse/gold/user_embeddings",
                     f"{home.resolve()}/warehouse/gold/user_profiles"}
    for v in ("user_behaviour", "user_embedding", "user_profile"):
        fv = ns[v]
        assert fv.ttl.days == 30 and fv.tags.get("owner"), v
        assert fv.batch_source.date_partition_column == "as_of_date"


def test_services(declared):
    ns, _ = declared
    rec = ns["recommender_v1"]
    assert {p.name for p in rec.feature_view_projections} == {"user_behaviour", "user_embedding", "user_profile"}
    light = {f.name for p in ns["ranking_light_v1"].feature_view_projections for f in p.features}
    assert {"profile_vec", "segment_id"} <= light and len(light) <= 10


def test_declarations_import_nothing_from_the_project():
    tree = ast.parse((REPO / "persona_repo.py").read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not modules & {"persona", "spark_jobs", "encoders"}
    assert [p.name for p in REPO.glob("*.py")] == ["persona_repo.py"]


def test_order_is_entities_sources_views_services():
    text = (REPO / "persona_repo.py").read_text()
    marks = [text.index(s) for s in ("Entity(", "SparkSource(", "FeatureView(", "FeatureService(")]
    assert marks == sorted(marks)


def test_yaml_spark_conf_matches_the_jobs():
    """The embedded feature_store.yaml carries the jobs' Spark settings (paths aside)."""
    import yaml

    from core.settings import load_settings
    from spark_jobs.session import spark_conf

    conf = yaml.safe_load((REPO / "feature_store.yaml").read_text())["offline_store"]["spark_conf"]
    jobs = spark_conf(load_settings(home="/tmp/x", environ={}))
    location_dependent = {"spark.jars", "spark.pyspark.python", "spark.pyspark.driver.python",
                          "spark.sql.warehouse.dir", "spark.driver.extraJavaOptions", "spark.app.name"}
    for key, value in jobs.items():
        if key == "spark.jars":
            assert conf["spark.driver.extraClassPath"] == "../.cache/jars/*"
        elif key in location_dependent:
            assert key in conf, key
        else:
            assert str(conf.get(key)) == value, key
