"""`forget`: the users leave every table, every file of every table version, the Delta
log history and the online store; nobody else changes.

Planted data: six tiny tables conforming to spark_jobs.schemas, each written in four
versions (append, append, UPDATE of the targets' rows, append of others), with a
checkpoint every two commits, deletion vectors on two tables, and pseudonymisation on:
target A is stored under its raw id in older bronze rows and under its HMAC elsewhere,
target B under its raw id; the quarantine holds raw lines naming both. The proof
scans every file under the home: every string value (nested ones too) of every parquet
file, and the raw bytes of every file (parquet footers' min/max stats, log JSON,
.crc checksums, the SQLite online store).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.settings import load_settings

pytestmark = pytest.mark.integration

KEY = "forget-test-key-of-32-characters"
A, B = "zq_target_a", "zq_target_b"
HA = hmac.new(KEY.encode(), A.encode(), hashlib.sha256).hexdigest()[:32]
OTHERS = ["u01", "u02", "u03", "u04"]
TODAY = dt.datetime.now(dt.timezone.utc).date()
D1, D2 = TODAY - dt.timedelta(days=2), TODAY - dt.timedelta(days=1)
NEEDLES = (A, B, HA)
SNAPSHOTS = ("silver.user_behaviour", "silver.user_sequences", "gold.user_embeddings", "gold.user_profiles")
DV_TABLES = ("silver.user_behaviour", "gold.user_profiles")


def end_of(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=dt.timezone.utc)


def _value(field, uid: str, day: dt.date, n: int):
    t = field.dataType.typeName()
    name = field.name
    if name == "user_id":
        return uid
    if t == "date":
        return day
    if t == "timestamp":
        return end_of(day)
    if t == "long":
        return n
    if t == "integer":
        return n % 7
    if t in ("double", "float"):
        return n + 0.5
    if t == "array":
        elem = field.dataType.elementType.typeName()
        return [f"c{n}", "c9"] if elem == "string" else [float(n), 0.25]
    return f"{name}-{n}"


def snapshot_rows(schema, users, day, start=0):
    return [tuple(_value(f, u, day, start + i) for f in schema.fields) for i, u in enumerate(users)]


def event_rows(users, day, start=0):
    from spark_jobs.schemas import EVENTS

    rows = []
    for i, u in enumerate(users):
        n = start + i
        d = dict(event_id=f"e{day:%m%d}{n}", user_id=u, item_id=f"i{n}", category_id=f"c{n % 3}",
                 event_type="view", event_ts=end_of(day) - dt.timedelta(hours=n % 5), event_date=day,
                 price=10.0 + n, quantity=1, session_id=f"s{n}", query=None, brand="b",
                 source="test", ingested_at=end_of(day))
        rows.append(tuple(d[f.name] for f in EVENTS.fields))
    return rows


def quarantine_rows(lines, day):
    from spark_jobs.schemas import QUARANTINE

    out = []
    for i, line in enumerate(lines):
        d = dict(raw_record=line, reason="bad_timestamp", source_file="in.csv", source_format="taobao",
                 record_hash=hashlib.sha256(line.encode()).hexdigest(), ingested_at=end_of(day), ingest_date=day)
        out.append(tuple(d[f.name] for f in QUARANTINE.fields))
    return out


def _write(spark, path, rows, schema, part, mode, props=None):
    w = spark.createDataFrame(rows, schema).write.format("delta").mode(mode)
    for k, v in (props or {}).items():
        w = w.option(k, v)
    w.partitionBy(part).save(path)


def build_tables(spark, settings):
    """Three versions per table: v0 holds the targets on two days, v1 (UPDATE) rewrites
    their files, v2 appends others; a checkpoint at v2 carries the targets' file stats."""
    from spark_jobs.schemas import TABLES

    for name, (schema, parts) in TABLES.items():
        path = settings.table(name)
        props = {"delta.checkpointInterval": "2"}
        if name in DV_TABLES:
            props["delta.enableDeletionVectors"] = "true"
        if name == "bronze.events":
            # raw A: ingested before pseudonymisation was switched on; HA after.
            v0 = event_rows(OTHERS + [A, A], D1) + event_rows(OTHERS + [HA, B], D2, start=10)
            v2 = event_rows(OTHERS, D2, start=20)
            update = f"UPDATE delta.`{path}` SET price = price + 1 WHERE user_id IN ('{A}', '{HA}', '{B}')"
        elif name == "bronze.events_quarantine":
            v0 = quarantine_rows([f"{A},12,100,pv,notatime", "u01,3,4,pv,", '{"user_id": "u02", "ts": "x"}'], D1) \
                + quarantine_rows([f'{{"user_id": "{B}", "item_id": 1}}', "u03;;", f"x,{A}"], D2)
            v2 = quarantine_rows(["u04,1,1,zz,1"], D2)
            update = (f"UPDATE delta.`{path}` SET reason = 'bad_type' "
                      f"WHERE raw_record LIKE '%{A}%' OR raw_record LIKE '%{B}%'")
        else:
            v0 = snapshot_rows(schema, OTHERS + [HA, B], D1) + snapshot_rows(schema, OTHERS + [HA, B], D2, start=10)
            v2 = snapshot_rows(schema, ["u05"], D2, start=30)
            update = (f"UPDATE delta.`{path}` SET created_timestamp = created_timestamp + INTERVAL 1 SECOND "
                      f"WHERE user_id IN ('{HA}', '{B}')")
        _write(spark, path, v0, schema, parts, "overwrite", props)
        spark.sql(update)
        _write(spark, path, v2, schema, parts, "append")


def fill_online(spark, settings):
    """The newest snapshot of each feature view's table, pushed into the online store
    with Feast's public write API (what materialize would write)."""
    from persona.serving.store import VIEW_TABLES, get_store

    store = get_store(settings)
    for view, table in VIEW_TABLES.items():
        df = spark.read.format("delta").load(settings.table(table)).where(f"as_of_date = DATE'{D2}'").toPandas()
        for col in df.columns:
            if df[col].dtype == object and len(df) and hasattr(df[col].iloc[0], "tolist"):
                df[col] = df[col].map(lambda v: v.tolist())
        store.write_to_online_store(view, df.drop(columns=["as_of_date"]))


# ---- scanning ----------------------------------------------------------------------------
def _strings(arr: pa.Array):
    if isinstance(arr, pa.ChunkedArray):
        for chunk in arr.chunks:
            yield from _strings(chunk)
        return
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        yield from (v for v in arr.to_pylist() if v is not None)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        yield from (v.decode("utf-8", "replace") for v in arr.to_pylist() if v is not None)
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _strings(arr.field(i))
    elif pa.types.is_map(t):
        yield from _strings(arr.keys)
        yield from _strings(arr.items)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        yield from _strings(arr.flatten())


def scan(root: Path, needles=NEEDLES) -> dict[str, list[str]]:
    """kind -> files holding any needle: parquet values, and raw bytes of every file."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        data = path.read_bytes()
        if any(n.encode() in data for n in needles):
            found.setdefault("bytes", []).append(rel)
        if path.suffix == ".parquet" and not path.name.startswith("."):
            table = pq.ParquetFile(path).read()  # no hive-partition inference from the path
            hit = any(n in s for col in table.columns for s in _strings(col) for n in needles)
            if hit:
                kind = "checkpoint" if "_delta_log" in rel else "data"
                found.setdefault(kind, []).append(rel)
        elif path.suffix in (".json", ".crc") and "_delta_log" in rel and any(n.encode() in data for n in needles):
            found.setdefault("log", []).append(rel)
    return found


def others_snapshot(spark, settings) -> dict:
    """table -> (row count, content hash) of every row that is not a target's."""
    from pyspark.sql import functions as F

    from spark_jobs.schemas import TABLES

    out = {}
    for name in TABLES:
        df = spark.read.format("delta").load(settings.table(name))
        if name == "bronze.events_quarantine":
            keep = ~(F.col("raw_record").contains(A) | F.col("raw_record").contains(B))
        else:
            keep = ~F.col("user_id").isin(*NEEDLES)
        rows = sorted(repr(tuple(r)) for r in df.where(keep).collect())
        out[name] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return out


# ---- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSONA_HMAC_KEY", KEY)
        yield


@pytest.fixture(scope="module")
def home(tmp_path_factory, env):
    return tmp_path_factory.mktemp("forget-home")


@pytest.fixture(scope="module")
def fsettings(home):
    return load_settings(home=home, environ={
        "PERSONA__SPARK__MASTER": "local[2]", "PERSONA__SPARK__SHUFFLE_PARTITIONS": "4",
        "PERSONA__INGEST__PSEUDONYMISE": "true"})


@pytest.fixture(scope="module")
def redis_settings(request, tmp_path_factory, fsettings):
    """A second Feast store on Redis over the same tables (None without redis-server)."""
    try:
        target = request.getfixturevalue("redis_server")
    except pytest.skip.Exception:
        return None
    return load_settings(home=tmp_path_factory.mktemp("forget-redis"), environ={
        "PERSONA__SPARK__MASTER": "local[2]", "PERSONA__INGEST__PSEUDONYMISE": "true",
        "PERSONA__WAREHOUSE": fsettings.warehouse_root,
        "PERSONA__FEAST__ONLINE_STORE": "redis", "PERSONA__FEAST__REDIS_CONNECTION": target})


@pytest.fixture(scope="module")
def forgotten(spark, fsettings, redis_settings, home):
    from persona.serving.lookup import get_online
    from persona.serving.store import apply
    from persona.serving.forget import forget_online, forget_users
    from spark_jobs.ops.forget import target_ids

    build_tables(spark, fsettings)
    stores = [fsettings] + ([redis_settings] if redis_settings else [])
    for s in stores:
        apply(s, spark)
        fill_online(spark, s)
    online_before = {id(s): get_online(s, [HA, B, "u01"]) for s in stores}
    before_scan = scan(home)
    before_others = others_snapshot(spark, fsettings)
    summary = forget_users(spark, fsettings, [A, B])
    redis_summary = forget_online(redis_settings, target_ids(redis_settings, [A, B])) if redis_settings else None
    return dict(summary=summary, redis=redis_summary, before_scan=before_scan, before_others=before_others,
                online_before=online_before, stores=stores)


# ---- tests -------------------------------------------------------------------------------
def test_ids_were_everywhere_before(forgotten):
    """The planted history really holds the ids (else the proof below proves nothing)."""
    found = forgotten["before_scan"]
    assert {"bytes", "data", "checkpoint", "log"} <= found.keys(), found.keys()
    assert any("online_store.db" in f for f in found["bytes"])
    for s, rows in forgotten["online_before"].items():
        from persona.serving.lookup import missing

        assert not any(missing(r) for r in rows), rows


def test_no_file_of_any_version_holds_the_ids(forgotten, home):
    assert scan(home) == {}


def test_rows_removed_per_table_and_summary(forgotten):
    s = forgotten["summary"]
    by = {t["table"]: t for t in s["tables"]}
    # events: A raw x2 (D1), HA + B (D2); quarantine: 3 raw lines naming A or B.
    assert by["bronze.events"]["rows_deleted"] == 4
    assert by["bronze.events_quarantine"]["rows_deleted"] == 3
    derived = [t for t in by if not t.startswith("bronze.")]  # snapshots and silver.user_daily
    assert set(SNAPSHOTS) <= set(derived)
    for name in derived:
        assert by[name]["rows_deleted"] == 4, name  # HA and B on two days
    assert s["users"] == 2 and s["pseudonymised"] and s["rows_deleted"] == 4 + 3 + 4 * len(derived)
    assert all(t["files_vacuumed"] > 0 and t["log_files_removed"] > 0 for t in s["tables"])
    assert all(t["files_rewritten"] > 0 for t in s["tables"])
    assert [o["store"] for o in s["online"]] == ["sqlite"]
    assert s["online"][0]["entries_deleted"] == 2 * 3  # two users x three feature views
    text = repr(s)
    assert A not in text and B not in text and HA not in text  # the summary names no id


def test_other_users_untouched(forgotten, spark, fsettings):
    assert others_snapshot(spark, fsettings) == forgotten["before_others"]


def test_tables_still_work(forgotten, spark, fsettings):
    """Reads, writes and history after the log purge."""
    from delta.tables import DeltaTable

    from spark_jobs.schemas import USER_PROFILES

    path = fsettings.table("gold.user_profiles")
    _write(spark, path, snapshot_rows(USER_PROFILES, ["u09"], TODAY), USER_PROFILES, ["as_of_date"], "append")
    assert spark.read.format("delta").load(path).where("user_id = 'u09'").count() == 1
    assert DeltaTable.forPath(spark, path).history().count() >= 2


def test_online_store_returns_nothing_for_the_users(forgotten):
    from persona.serving.lookup import get_online, missing

    for s in forgotten["stores"]:
        rows = {r["user_id"]: r for r in get_online(s, [HA, B, A, "u01"])}
        assert missing(rows[HA]) and missing(rows[B]) and missing(rows[A])
        assert not missing(rows["u01"])


def test_redis_entries_deleted(forgotten):
    if forgotten["redis"] is None:
        pytest.skip("redis-server not installed")
    assert forgotten["redis"] == [
        {"store": "redis", "where": forgotten["stores"][1].feast.redis_connection, "entries_deleted": 2,
         "rows_deleted": 2}]


def test_token_pattern_matches_whole_tokens_only(spark):
    from pyspark.sql import functions as F

    from spark_jobs.ops.forget import token_pattern

    lines = ["u12,1,pv", '{"user_id":"u12"}', "x u12", "u123,1", "au12", "u12_x", "u1.2"]
    df = spark.createDataFrame([(x,) for x in lines], "r string")
    hits = [r[0] for r in df.where(F.col("r").rlike(token_pattern("u12"))).collect()]
    assert sorted(hits) == sorted(["u12,1,pv", '{"user_id":"u12"}', "x u12"])
    dotted = [r[0] for r in df.where(F.col("r").rlike(token_pattern("u1.2"))).collect()]
    assert dotted == ["u1.2"]  # metacharacters are literal


def test_forget_without_a_key_is_one_clear_error(fsettings, monkeypatch):
    from core.errors import InputError
    from spark_jobs.ops.forget import target_ids

    monkeypatch.delenv("PERSONA_HMAC_KEY", raising=False)
    with pytest.raises(InputError, match="no key"):
        target_ids(fsettings, [A])
    with pytest.raises(InputError, match="must not be empty"):
        target_ids(fsettings, [" "])


def test_cli_asks_first_and_states_the_overridden_retention(tmp_path):
    """Without --yes nothing happens until the user agrees (no Spark started either)."""
    from typer.testing import CliRunner

    from persona.cli.app import app

    result = CliRunner().invoke(app, ["--home", str(tmp_path / "h"), "forget", "u1"], input="n\n")
    assert result.exit_code != 0
    text = result.output
    assert "OVERRIDING delta.deletedFileRetentionDuration" in text and "delta.logRetentionDuration" in text
    assert "bronze.events_quarantine" in text and "gold.user_profiles" in text
    assert not (tmp_path / "h" / "warehouse").exists()


def test_redis_down_fails_before_anything_is_deleted(spark, tmp_path):
    import socket

    from core.errors import ServiceError
    from persona.serving.forget import forget_users

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(home=tmp_path / "h", environ={
        "PERSONA__FEAST__ONLINE_STORE": "redis", "PERSONA__FEAST__REDIS_CONNECTION": f"127.0.0.1:{port}"})
    called = []
    with pytest.raises(ServiceError, match="unreachable.*nothing was deleted"):
        forget_users(spark, settings, ["u1"], progress=called.append)
    assert called == []  # no table was touched
