"""Feast over persona's Delta tables: point-in-time correctness offline, and online ==
offline after materialize, on SQLite and on a real Redis.

Planted data (tests/support/feast_data.py; dates relative to today, so incremental
materialization behaves as in production): snapshot k of user i carries the value
100*k + i in every count, in the embedding and the profile vector, so any leak from a
later snapshot is visible.
One Spark session (conftest), one set of tiny tables, one store per online backend.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.support.feast_data import DAYS, TODAY, USERS, end_of, planted, write_snapshot

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def tables(spark, module_settings):
    for k in sorted(DAYS):
        write_snapshot(spark, module_settings, k, [u for u, ks in USERS.items() if k in ks])
    return module_settings


@pytest.fixture(scope="module")
def sqlite_store(spark, tables):
    from persona.serving.materialize import materialize
    from persona.serving.store import apply

    applied = apply(tables, spark)
    first = materialize(tables, spark=spark, show_progress=False)
    return tables, applied, first


def latest_rows(spark, settings) -> dict:
    """user -> {feature: value} from the newest snapshot of each table (pure Spark)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    out: dict = {}
    for table in ("silver.user_behaviour", "gold.user_embeddings", "gold.user_profiles"):
        df = spark.read.format("delta").load(settings.table(table))
        w = Window.partitionBy("user_id").orderBy(F.col("event_timestamp").desc(), F.col("created_timestamp").desc())
        latest = df.withColumn("_r", F.row_number().over(w)).filter("_r = 1").drop("_r")
        for row in latest.collect():
            d = row.asDict()
            for k in ("as_of_date", "event_timestamp", "created_timestamp"):
                d.pop(k)
            if table == "gold.user_profiles":
                d.pop("encoder_version")  # served from the embedding view
            out.setdefault(d.pop("user_id"), {}).update(d)
    return out


def assert_online_equals_offline(settings, spark, expired=("u5",)):
    from persona.serving.lookup import get_online, missing

    latest = latest_rows(spark, settings)
    users = sorted(latest) + ["nobody"]
    online = {r["user_id"]: r for r in get_online(settings, users)}
    for user in users:
        row = online[user]
        if user == "nobody" or user in expired:
            assert missing(row), user  # unknown / older than ttl: nulls
            continue
        want = latest[user]
        got = {k: v for k, v in row.items() if k != "user_id"}
        assert got.keys() == want.keys(), user
        for name, value in want.items():
            assert got[name] == value, (user, name, got[name], value)


# ---- SQLite --------------------------------------------------------------------------
def test_apply_registers_views_and_services(sqlite_store):
    _, applied, _ = sqlite_store
    assert applied["views"] == ["user_behaviour", "user_embedding", "user_profile"]
    assert applied["services"] == ["ranking_light_v1", "recommender_v1"]
    assert applied["online_store"] == "sqlite"


def test_first_materialize_loads_users_within_ttl(sqlite_store):
    _, _, first = sqlite_store
    assert first["mode"] == "incremental"
    # u5's only snapshot is 45 days old: outside the 30-day ttl of the newest snapshot.
    assert first["views"] == {"user_behaviour": 4, "user_embedding": 4, "user_profile": 4}


def test_online_equals_offline_sqlite(spark, sqlite_store):
    settings, _, _ = sqlite_store
    assert_online_equals_offline(settings, spark)


def test_point_in_time_training_set(spark, sqlite_store, tmp_path):
    """Each entity row gets the latest snapshot at or before its stamp, within ttl."""
    import pandas as pd

    from persona.serving.lookup import training_set

    settings, _, _ = sqlite_store
    second = dt.timedelta(seconds=1)
    cases = [  # (user, stamp, expected snapshot or None)
        ("u1", end_of(DAYS[1]) - dt.timedelta(hours=12), None),  # D1 not over yet: no leak
        ("u1", end_of(DAYS[1]), 1),                              # exactly at the stamp
        ("u1", end_of(DAYS[1]) + second, 1),
        ("u1", end_of(DAYS[2]) - second, 1),                     # D2 exists, but later
        ("u1", end_of(DAYS[2]), 2),
        ("u2", end_of(DAYS[3]) - dt.timedelta(days=1), 2),
        ("u3", end_of(DAYS[1]) + second, None),                  # u3 starts at D2
        ("u3", end_of(DAYS[3]) + dt.timedelta(days=29), 3),     # within the 30-day ttl
        ("u2", end_of(DAYS[3]) + dt.timedelta(days=31), None),  # beyond ttl: nulls
        ("u4", end_of(DAYS[3]), 1),                              # last seen D1, 9 days back
        ("u5", end_of(DAYS[0]) + dt.timedelta(days=2), 0),
        ("nobody", end_of(DAYS[3]), None),
    ]
    entities = pd.DataFrame({"user_id": [c[0] for c in cases],
                             "event_timestamp": [c[1] for c in cases],
                             "row_id": list(range(len(cases)))})
    path = tmp_path / "entities.parquet"
    entities.to_parquet(path, coerce_timestamps="us", allow_truncated_timestamps=True)
    out = tmp_path / "train"
    summary = training_set(settings, str(path), str(out), spark=spark)
    assert summary["rows"] == len(cases)
    got = {r["row_id"]: r for r in spark.read.parquet(str(out)).collect()}
    for i, (user, stamp, k) in enumerate(cases):
        row = got[i]
        if k is None:
            assert row["views_7d"] is None and row["user_emb"] is None and row["segment_id"] is None, (user, stamp)
            continue
        v = planted(k, user)
        assert row["views_7d"] == v, (user, stamp, row["views_7d"], v)
        assert row["days_since_last_purchase"] == (None if user == "u2" else v)
        assert row["user_emb"] == [float(v), float(k), 0.5]
        assert row["profile_vec"] == [float(v), -1.5] and row["segment_id"] == v
        assert row["encoder_version"] == f"enc-{k}" and row["fusion_version"] == f"fuse-{k}"


def test_feast_session_setting_is_restored(spark, sqlite_store):
    # Feast's Spark store flips this on the shared session; persona puts it back.
    assert spark.conf.get("spark.sql.parser.quotedRegexColumnNames", "false") == "false"


def test_incremental_picks_up_a_new_day(spark, sqlite_store):
    """A snapshot stamped after the last run (today, end of day) arrives incrementally."""
    from persona.serving.lookup import get_online
    from persona.serving.materialize import materialize

    settings, _, _ = sqlite_store
    DAYS[4] = TODAY
    write_snapshot(spark, settings, 4, ["u1"])
    again = materialize(settings, spark=spark, show_progress=False)
    assert again["mode"] == "incremental"
    assert again["views"] == {"user_behaviour": 1, "user_embedding": 1, "user_profile": 1}
    row = get_online(settings, ["u1"])[0]
    assert row["views_7d"] == planted(4, "u1") and row["segment_id"] == planted(4, "u1")
    assert_online_equals_offline(settings, spark)


# ---- Redis ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_settings(tables, redis_server, tmp_path_factory, spark, sqlite_store):
    """The production shape: another home over the same warehouse, online store = a real
    Redis, registry = a SQL registry (SQLAlchemy URL; SQLite here, PostgreSQL in prod)."""
    from persona.serving.materialize import materialize
    from persona.serving.store import apply
    from core.settings import load_settings

    home = tmp_path_factory.mktemp("redis-home")
    s = load_settings(home=home, environ={
        "PERSONA__SPARK__MASTER": "local[2]",
        "PERSONA__WAREHOUSE": tables.warehouse_root,
        "PERSONA__FEAST__ONLINE_STORE": "redis",
        "PERSONA__FEAST__REDIS_CONNECTION": redis_server,
        "PERSONA__FEAST__REGISTRY_URL": f"sqlite:///{home}/registry.sqlite",
        # The cluster path: executors encode and write (mapInArrow); the driver path is
        # what local masters use by default, tested below.
        "PERSONA__FEAST__WRITE_FROM": "executors",
    })
    apply(s, spark)
    summary = materialize(s, spark=spark, show_progress=False)
    return s, summary


def test_online_equals_offline_redis(spark, redis_settings):
    settings, summary = redis_settings
    assert summary["engine"] == "persona"
    assert type(serving_store(settings).registry).__name__ == "SqlRegistry"
    assert summary["views"]["user_behaviour"] == 4  # u1..u4 (u5 beyond ttl)
    assert_online_equals_offline(settings, spark)


def test_driver_write_path_equals_offline_too(spark, redis_settings, redis_server):
    """Window mode, written from the driver (the default on local masters), into an
    emptied Redis: the same online rows."""
    import redis

    from persona.serving.materialize import materialize

    settings, _ = redis_settings
    driver = settings.model_copy(update={"feast": settings.feast.model_copy(update={"write_from": "driver"})})
    host, port = redis_server.split(":")
    redis.Redis(host=host, port=int(port)).flushall()
    summary = materialize(driver, start=end_of(DAYS[0]), spark=spark, show_progress=False)
    assert summary["mode"] == "window" and summary["users"] == 5  # the window reaches back to D0
    assert_online_equals_offline(driver, spark, expired=())


def serving_store(settings):
    from persona.serving.store import get_store

    return get_store(settings)


def test_stock_feast_reads_what_persona_wrote(redis_settings):
    """Feast's own RedisOnlineStore (type: redis) returns exactly what persona's store
    returns, for every user, both services, short and full feature names."""
    from feast import FeatureStore, RepoConfig

    from persona.serving.store import REPO_DIR, config_dict, get_store

    settings, _ = redis_settings
    ours = get_store(settings)
    stock_cfg = config_dict(settings)
    stock_cfg["online_store"]["type"] = "redis"
    stock = FeatureStore(repo_path=str(REPO_DIR), config=RepoConfig(repo_path=REPO_DIR, **stock_cfg))
    assert type(ours._get_provider().online_store).__name__ == "PersonaRedisOnlineStore"
    assert type(stock._get_provider().online_store).__name__ == "RedisOnlineStore"
    rows = [{"user_id": u} for u in ("u1", "u2", "nobody", "u3", "u1", "u4", "u5")]
    for service in ("recommender_v1", "ranking_light_v1"):
        for full in (False, True):
            a = ours.get_online_features(ours.get_feature_service(service), rows, full_feature_names=full)
            b = stock.get_online_features(stock.get_feature_service(service), rows, full_feature_names=full)
            # Decoded straight from Redis' bytes, before persona's proto is even built.
            assert "_pending" in a.__dict__ and list(a.to_dict().items()) == list(b.to_dict().items())
            assert a.proto.SerializeToString(deterministic=True) == b.proto.SerializeToString(deterministic=True)
            assert a.to_dict() == b.to_dict()
            assert a.to_dict(include_event_timestamps=True) == b.to_dict(include_event_timestamps=True)


def test_redis_down_is_one_clear_error(tables, spark):
    from persona.serving.lookup import get_online
    from persona.serving.materialize import materialize
    from core.settings import load_settings
    from core.errors import ServiceError

    s = load_settings(home=tables.home, environ={
        "PERSONA__FEAST__ONLINE_STORE": "redis", "PERSONA__FEAST__REDIS_CONNECTION": "127.0.0.1:1"})
    with pytest.raises(ServiceError, match="Redis online store at 127.0.0.1:1 is unreachable"):
        get_online(s, ["u1"])
    with pytest.raises(ServiceError):
        materialize(s, spark=spark, show_progress=False)


def test_delta_reader_selects_what_feasts_spark_query_selects(spark, redis_settings):
    """persona's delta-rs read (no Spark job) returns exactly the rows of Feast's
    pull_latest query, per view, for a window that holds several snapshots per user."""
    from feast.infra.common.materialization_job import MaterializationTask

    from persona.serving.store import feast_spark, get_store

    settings, _ = redis_settings
    store = get_store(settings)
    engine = store._get_provider().batch_engine
    start, end = end_of(DAYS[1]) - dt.timedelta(hours=1), end_of(DAYS[3])
    for fv in store.list_feature_views():
        task = MaterializationTask(project=store.project, feature_view=fv, start_time=start, end_time=end)
        job, join_keys = engine._offline_job(store.registry, task)
        with feast_spark(spark):
            want = job.to_spark_df().toArrow()
        got = engine._delta_latest(store.registry, task, join_keys)
        assert got is not None, fv.name
        assert [(f.name, f.type) for f in got.schema] == [(f.name, f.type) for f in want.schema], fv.name
        key = [("user_id", "ascending")]
        assert got.sort_by(key).to_pylist() == want.sort_by(key).to_pylist(), fv.name
        assert got.num_rows == 4  # u1..u4 have a snapshot in the window; u5 does not


def test_lean_http_server_answers_in_feasts_json(redis_settings):
    """persona serve's server: Feast's /get-online-features request and response JSON
    (Feast's own convert_response_to_dict of the SDK response), errors as JSON."""
    import http.client
    import json

    from feast.feature_server_utils import convert_response_to_dict

    from persona.serving.store import get_store
    from persona.serving.http import serve_in_thread

    settings, _ = redis_settings
    store = get_store(settings)
    server, _ = serve_in_thread(store)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)

        def post(body) -> tuple[int, dict]:
            conn.request("POST", "/get-online-features", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())

        users = ["u1", "nobody", "u3", "u1"]
        for body, features in (
            ({"feature_service": "recommender_v1", "entities": {"user_id": users}},
             store.get_feature_service("recommender_v1")),
            ({"features": ["user_profile:segment_id", "user_behaviour:views_7d"], "entities": {"user_id": users},
              "full_feature_names": True}, ["user_profile:segment_id", "user_behaviour:views_7d"]),
        ):
            status, got = post(body)
            want = convert_response_to_dict(store.get_online_features(
                features=features, entity_rows={"user_id": users},
                full_feature_names=body.get("full_feature_names", False)).proto)
            assert status == 200 and got == json.loads(json.dumps(want))
        names = got["metadata"]["feature_names"]
        assert got["results"][names.index("user_profile__segment_id")]["values"][0] == planted(max(DAYS), "u1")
        status, err = post({"feature_service": "nope", "entities": {"user_id": ["u1"]}})
        assert status == 404 and "nope" in err["detail"]
        status, err = post({"feature_service": "recommender_v1"})
        assert status == 422 and "entities" in err["detail"]
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b'{"status":"ok"}'  # the keep-alive connection still works
    finally:
        server.shutdown()
        server.server_close()
